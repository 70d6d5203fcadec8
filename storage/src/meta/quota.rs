//! Quota accounting: each blob and manifest counted once per quota scope, however many of the
//! scope's repositories hold it, kept exact in the transactions that add and remove what is
//! counted.
//!
//! # How usage stays exact
//! Every transaction that creates a (repository, digest) pair a quota counts (a new blob link:
//! upload commit, mount, link; a new manifest row) calls [`Meta::quota_add`] before it commits;
//! every one that deletes such a pair (unlinking a blob, deleting a manifest, the collector)
//! calls [`Meta::quota_remove`]. `quota_objects.refs` counts the pairs per (scope, digest); the
//! digest's size is added to `quota_usage` when its count goes from 0 to 1 and taken off when
//! it returns to 0. The add is a conditional UPDATE of the scope's usage row (`bytes + size <=
//! limit`), which also locks the row: two pushers racing past a limit serialize there and the
//! second sees the first's bytes, so the limit holds exactly. Over the limit, the transaction
//! rolls back with [`Error::QuotaExceeded`]: nothing of it is stored.
//!
//! A change of the configured scopes is picked up by [`Meta::quota_recompute`] (run by
//! `serve` at start and by `berth-registry quota recompute`), which rebuilds both tables from
//! the links and manifests.

use super::{to_u64, Dialect, Meta, Tx};
use crate::error::{Error, Result};
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};

/// One scope's usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaUsage {
    /// The scope's name.
    pub scope: String,
    /// Bytes counted.
    pub bytes: u64,
    /// Distinct blobs and manifests counted.
    pub objects: u64,
}

fn e(op: &'static str) -> impl Fn(sqlx::Error) -> Error {
    move |source| Error::Database { op, source }
}

impl Meta {
    /// Counts a new (repository, digest) pair in every quota scope of `repo`; fails with
    /// [`Error::QuotaExceeded`] (the caller's transaction then rolls back) when a scope would
    /// go over its limit.
    pub(super) async fn quota_add(&self, tx: &mut Tx<'_>, repo: &str, digest: &str, size: u64) -> Result<()> {
        let op = "counting towards a quota";
        for q in self.policy.quotas(repo) {
            let refs: i64 = sqlx::query_scalar(
                "INSERT INTO quota_objects (scope, digest, size, refs) VALUES ($1, $2, $3, 1) \
                 ON CONFLICT (scope, digest) DO UPDATE SET refs = quota_objects.refs + 1 RETURNING refs",
            )
            .bind(&q.scope)
            .bind(digest)
            .bind(size as i64)
            .fetch_one(&mut **tx)
            .await
            .map_err(e(op))?;
            if refs > 1 {
                continue;
            }
            sqlx::query("INSERT INTO quota_usage (scope, bytes) VALUES ($1, 0) ON CONFLICT (scope) DO NOTHING")
                .bind(&q.scope)
                .execute(&mut **tx)
                .await
                .map_err(e(op))?;
            let r = sqlx::query("UPDATE quota_usage SET bytes = bytes + $2 WHERE scope = $1 AND bytes + $2 <= $3")
                .bind(&q.scope)
                .bind(size as i64)
                .bind(i64::try_from(q.limit).unwrap_or(i64::MAX))
                .execute(&mut **tx)
                .await
                .map_err(e(op))?;
            if r.rows_affected() == 0 {
                let usage: i64 = sqlx::query_scalar("SELECT bytes FROM quota_usage WHERE scope = $1")
                    .bind(&q.scope)
                    .fetch_one(&mut **tx)
                    .await
                    .map_err(e(op))?;
                return Err(Error::QuotaExceeded {
                    quota: q.scope,
                    usage: to_u64(usage, "quota usage")?,
                    limit: q.limit,
                    adding: size,
                });
            }
        }
        Ok(())
    }

    /// Uncounts a deleted (repository, digest) pair in every quota scope of `repo`.
    pub(super) async fn quota_remove(&self, tx: &mut Tx<'_>, repo: &str, digest: &str) -> Result<()> {
        let op = "uncounting from a quota";
        for q in self.policy.quotas(repo) {
            let row = sqlx::query(
                "UPDATE quota_objects SET refs = refs - 1 WHERE scope = $1 AND digest = $2 RETURNING refs, size",
            )
            .bind(&q.scope)
            .bind(digest)
            .fetch_optional(&mut **tx)
            .await
            .map_err(e(op))?;
            let Some(row) = row else { continue };
            let (refs, size): (i64, i64) = (row.try_get(0).map_err(e(op))?, row.try_get(1).map_err(e(op))?);
            if refs > 0 {
                continue;
            }
            sqlx::query("DELETE FROM quota_objects WHERE scope = $1 AND digest = $2")
                .bind(&q.scope)
                .bind(digest)
                .execute(&mut **tx)
                .await
                .map_err(e(op))?;
            sqlx::query("UPDATE quota_usage SET bytes = bytes - $2 WHERE scope = $1")
                .bind(&q.scope)
                .bind(size)
                .execute(&mut **tx)
                .await
                .map_err(e(op))?;
        }
        Ok(())
    }

    /// [`Meta::quota_remove`] for a repository known by id (the collector's view).
    pub(super) async fn quota_remove_by_id(&self, tx: &mut Tx<'_>, repo_id: i64, digest: &str) -> Result<()> {
        let name: Option<String> = sqlx::query_scalar("SELECT name FROM repositories WHERE id = $1")
            .bind(repo_id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(e("uncounting from a quota"))?;
        match name {
            Some(name) => self.quota_remove(tx, &name, digest).await,
            None => Ok(()),
        }
    }

    /// Fails early (before an upload's bytes move into place) when adding `size` bytes of
    /// `digest` to `repo` would exceed a quota. Advisory: the binding check is
    /// [`Meta::quota_add`] when the blob is linked.
    pub(super) async fn quota_precheck(&self, tx: &mut Tx<'_>, repo: &str, digest: &str, size: u64) -> Result<()> {
        let op = "checking a quota";
        for q in self.policy.quotas(repo) {
            let held: Option<i64> =
                sqlx::query_scalar("SELECT refs FROM quota_objects WHERE scope = $1 AND digest = $2")
                    .bind(&q.scope)
                    .bind(digest)
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(e(op))?;
            if held.is_some() {
                continue;
            }
            let usage: Option<i64> = sqlx::query_scalar("SELECT bytes FROM quota_usage WHERE scope = $1")
                .bind(&q.scope)
                .fetch_optional(&mut **tx)
                .await
                .map_err(e(op))?;
            let usage = to_u64(usage.unwrap_or(0), "quota usage")?;
            if usage.saturating_add(size) > q.limit {
                return Err(Error::QuotaExceeded {
                    quota: q.scope,
                    usage,
                    limit: q.limit,
                    adding: size,
                });
            }
        }
        Ok(())
    }

    /// The stored usage of every scope, by name.
    pub async fn quota_usage(&self) -> Result<Vec<QuotaUsage>> {
        let op = "reading quota usage";
        let rows = sqlx::query(
            "SELECT u.scope, u.bytes, (SELECT COUNT(*) FROM quota_objects o WHERE o.scope = u.scope) \
             FROM quota_usage u ORDER BY u.scope",
        )
        .fetch_all(&self.read)
        .await
        .map_err(e(op))?;
        rows.iter()
            .map(|r| {
                Ok(QuotaUsage {
                    scope: r.try_get(0).map_err(e(op))?,
                    bytes: to_u64(r.try_get(1).map_err(e(op))?, "quota usage")?,
                    objects: to_u64(r.try_get(2).map_err(e(op))?, "quota objects")?,
                })
            })
            .collect()
    }

    /// Rebuilds quota accounting from the blob links and manifests under the policy in force,
    /// and returns the usage found. On PostgreSQL both tables are locked for the rebuild, so a
    /// push either committed before it (and is counted) or counts itself after it.
    pub async fn quota_recompute(&self) -> Result<Vec<QuotaUsage>> {
        let op = "recomputing quota usage";
        let mut tx = self.begin().await?;
        if self.dialect == Dialect::Postgres {
            sqlx::query("LOCK TABLE quota_usage, quota_objects IN EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await
                .map_err(e(op))?;
        }
        let rows = sqlx::query(
            "SELECT r.name, l.digest, b.size FROM repo_blobs l JOIN repositories r ON r.id = l.repo_id \
             JOIN blobs b ON b.digest = l.digest \
             UNION ALL SELECT r.name, m.digest, CAST(LENGTH(m.content) AS BIGINT) FROM manifests m \
             JOIN repositories r ON r.id = m.repo_id",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(e(op))?;
        let mut scopes_of: HashMap<String, Vec<String>> = HashMap::new();
        let mut counted: BTreeMap<String, BTreeMap<String, (i64, i64)>> = BTreeMap::new();
        for r in &rows {
            let repo: String = r.try_get(0).map_err(e(op))?;
            let digest: String = r.try_get(1).map_err(e(op))?;
            let size: i64 = r.try_get(2).map_err(e(op))?;
            let scopes = scopes_of
                .entry(repo.clone())
                .or_insert_with(|| self.policy.quotas(&repo).into_iter().map(|q| q.scope).collect());
            for s in scopes.iter() {
                let entry = counted
                    .entry(s.clone())
                    .or_default()
                    .entry(digest.clone())
                    .or_insert((size, 0));
                entry.1 += 1;
            }
        }
        for sql in ["DELETE FROM quota_objects", "DELETE FROM quota_usage"] {
            sqlx::query(sql).execute(&mut *tx).await.map_err(e(op))?;
        }
        let mut out = Vec::new();
        for (scope, objects) in &counted {
            let mut bytes = 0i64;
            for (digest, (size, refs)) in objects {
                sqlx::query("INSERT INTO quota_objects (scope, digest, size, refs) VALUES ($1, $2, $3, $4)")
                    .bind(scope)
                    .bind(digest)
                    .bind(size)
                    .bind(refs)
                    .execute(&mut *tx)
                    .await
                    .map_err(e(op))?;
                bytes = bytes.saturating_add(*size);
            }
            sqlx::query("INSERT INTO quota_usage (scope, bytes) VALUES ($1, $2)")
                .bind(scope)
                .bind(bytes)
                .execute(&mut *tx)
                .await
                .map_err(e(op))?;
            out.push(QuotaUsage {
                scope: scope.clone(),
                bytes: to_u64(bytes, "quota usage")?,
                objects: objects.len() as u64,
            });
        }
        tx.commit().await.map_err(e(op))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{Policy, Quota};
    use berth_oci::Digest;
    use std::sync::Arc;

    #[derive(Debug)]
    struct TeamQuota;
    impl Policy for TeamQuota {
        fn quotas(&self, repo: &str) -> Vec<Quota> {
            if repo.starts_with("team/") {
                vec![Quota {
                    scope: "team/**".into(),
                    limit: 75,
                }]
            } else {
                Vec::new()
            }
        }
        fn immutable(&self, _: &str, _: &str) -> bool {
            false
        }
    }

    /// Twenty concurrent links of distinct 10-byte blobs against a 75-byte limit: exactly
    /// seven fit on every backend (PostgreSQL runs them truly in parallel), a shared blob
    /// counts once, unlinking gives space back, and a recomputation agrees.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_links_never_exceed_the_limit() {
        for (name, meta) in crate::testing::metas().await {
            let meta = meta.with_policy(Arc::new(TeamQuota));
            let mut tasks = Vec::new();
            for i in 0..20u32 {
                let meta = meta.clone();
                tasks.push(tokio::spawn(async move {
                    let d = Digest::of(format!("blob {i}").as_bytes());
                    meta.link_blob(&format!("team/r{}", i % 2), &d, 10).await.map(|_| d)
                }));
            }
            let mut ok = Vec::new();
            for t in tasks {
                match t.await.expect("task") {
                    Ok(d) => ok.push(d),
                    Err(Error::QuotaExceeded { limit: 75, .. }) => {}
                    Err(e) => panic!("{name}: {e}"),
                }
            }
            assert_eq!(ok.len(), 7, "{name}");
            let usage = meta.quota_usage().await.expect("usage");
            assert_eq!(usage[0].bytes, 70, "{name}");
            // Shared within the scope: counted once; outside it: not at all.
            meta.link_blob("team/other", &ok[0], 10).await.expect("shared");
            meta.link_blob("elsewhere", &Digest::of(b"x"), 1000)
                .await
                .expect("outside");
            assert_eq!(meta.quota_usage().await.expect("usage")[0].bytes, 70, "{name}");
            assert!(
                meta.unlink_blob("team/r0", &ok[0]).await.expect("unlink")
                    || meta.unlink_blob("team/r1", &ok[0]).await.expect("unlink")
            );
            assert_eq!(
                meta.quota_usage().await.expect("usage")[0].bytes,
                70,
                "{name}: still held by team/other"
            );
            assert!(meta.unlink_blob("team/other", &ok[0]).await.expect("unlink"));
            let stored = meta.quota_usage().await.expect("usage");
            assert_eq!(stored[0].bytes, 60, "{name}");
            assert_eq!(meta.quota_recompute().await.expect("recompute"), stored, "{name}");
        }
    }
}
