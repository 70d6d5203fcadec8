//! Retention's queries: the tags with their push and pull times, and the conditional delete
//! that re-checks, in the transaction that deletes, what the plan assumed (the tag still names
//! the same manifest, is not immutable, and nothing pinned is under it). Untagged manifests go
//! through the collector's own re-checked delete ([`Meta::gc_delete_manifest`]).

use super::{now_ms, Meta};
use crate::error::{Error, Result};
use sqlx::Row;

/// A tag as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionTag {
    /// Repository name.
    pub repo: String,
    /// Tag name.
    pub tag: String,
    /// The manifest it names.
    pub digest: String,
    /// Unix milliseconds of its last push (the tag's last PUT).
    pub pushed_at: i64,
    /// Unix milliseconds of the manifest's last recorded pull, if any.
    pub last_pulled: Option<i64>,
}

fn e(op: &'static str) -> impl Fn(sqlx::Error) -> Error {
    move |source| Error::Database { op, source }
}

impl Meta {
    /// Every tag, by repository and tag name.
    pub async fn retention_tags(&self) -> Result<Vec<RetentionTag>> {
        let op = "listing tags for retention";
        let rows = sqlx::query(
            "SELECT r.name, t.name, t.manifest_digest, t.updated_at, m.last_pulled FROM tags t \
             JOIN repositories r ON r.id = t.repo_id \
             JOIN manifests m ON m.repo_id = t.repo_id AND m.digest = t.manifest_digest ORDER BY r.name, t.name",
        )
        .fetch_all(&self.read)
        .await
        .map_err(e(op))?;
        rows.iter()
            .map(|r| {
                let pushed: i64 = r.try_get(3).map_err(e(op))?;
                Ok(RetentionTag {
                    repo: r.try_get(0).map_err(e(op))?,
                    tag: r.try_get(1).map_err(e(op))?,
                    digest: r.try_get(2).map_err(e(op))?,
                    pushed_at: pushed.saturating_mul(1000),
                    last_pulled: r.try_get(4).map_err(e(op))?,
                })
            })
            .collect()
    }

    /// Deletes `tag` of `repo` if it still names `digest`, is not immutable, and neither the
    /// manifest nor a manifest it lists is pinned. Returns whether it did. The manifest stays
    /// (untagged, for the collector's grace period), as with a client's tag DELETE.
    pub async fn retention_delete_tag(&self, repo: &str, tag: &str, digest: &str) -> Result<bool> {
        let op = "deleting a tag by retention";
        if self.policy.immutable(repo, tag) {
            return Ok(false);
        }
        let mut tx = self.begin().await?;
        let Some(repo_id) = sqlx::query_scalar::<_, i64>("SELECT id FROM repositories WHERE name = $1")
            .bind(repo)
            .fetch_optional(&mut *tx)
            .await
            .map_err(e(op))?
        else {
            return Ok(false);
        };
        let now = now_ms();
        Self::touch_tagged(&mut tx, repo_id, tag, now).await?;
        let sql = format!(
            "DELETE FROM tags WHERE repo_id = $1 AND name = $2 AND manifest_digest = $3 AND NOT {} \
             AND NOT EXISTS (SELECT 1 FROM manifest_refs c WHERE c.repo_id = $1 AND c.manifest_digest = $3 AND {})",
            super::pins::pinned_sql("$3", "$4"),
            super::pins::pinned_sql("c.child_digest", "$4"),
        );
        let r = sqlx::query(&sql)
            .bind(repo_id)
            .bind(tag)
            .bind(digest)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(e(op))?;
        if r.rows_affected() == 0 {
            return Ok(false);
        }
        tx.commit().await.map_err(e(op))?;
        Ok(true)
    }
}
