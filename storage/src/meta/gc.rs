//! The collector's queries: one consistent read of the reference graph (the mark), and one
//! short transaction per item swept, which re-checks under the item's row lock that nothing
//! references it before deleting it.
//!
//! # Why this is race-free without a read-only window
//! Every writer that creates a reference locks (touches) the referenced row in the same
//! transaction: a manifest put touches the links and child manifests it needs, an upload
//! commit touches the blob row before its bytes move, a mount touches the blob row and the
//! source link, a tag move touches the manifest it leaves. The collector takes the same row
//! lock first, then decides in a later statement (a fresh snapshot under PostgreSQL's READ
//! COMMITTED; SQLite runs one writer at a time anyway). So either the writer committed first
//! and the collector sees its reference and keeps the row, or the collector deleted first and
//! the writer finds the row gone and fails cleanly (`MANIFEST_BLOB_UNKNOWN`, or an upload
//! that writes its own bytes). A blob's bytes are deleted while the collector still holds the
//! row's lock, after the row's DELETE and before the COMMIT: an upload of the same content
//! waits for that lock and then finds no bytes, instead of trusting bytes about to vanish.

use super::{to_u64, Meta, Tx, UploadRow};
use crate::error::{Error, Result};
use sqlx::Row;
use std::collections::HashMap;
use std::future::Future;

/// A manifest as the collector sees it.
#[derive(Debug, Clone)]
pub struct GcManifest {
    /// Repository id.
    pub repo_id: i64,
    /// Its digest.
    pub digest: String,
    /// The manifest it refers to (referrers API), if any.
    pub subject: Option<String>,
    /// Unix milliseconds of its push or last reference.
    pub last_referenced: i64,
    /// Bytes of content.
    pub size: u64,
}

/// A repository's link to a blob.
#[derive(Debug, Clone)]
pub struct GcLink {
    /// Repository id.
    pub repo_id: i64,
    /// Blob digest.
    pub digest: String,
    /// Unix milliseconds of its creation or last reference.
    pub last_referenced: i64,
}

/// A blob row.
#[derive(Debug, Clone)]
pub struct GcBlob {
    /// Its digest.
    pub digest: String,
    /// Its size.
    pub size: u64,
    /// Unix milliseconds of its creation or last reference.
    pub last_referenced: i64,
}

/// Everything the mark needs, read in one snapshot.
#[derive(Debug, Clone, Default)]
pub struct GcGraph {
    /// Repository id → name.
    pub repos: HashMap<i64, String>,
    /// Every manifest.
    pub manifests: Vec<GcManifest>,
    /// (repository id, manifest digest) of every tag.
    pub tags: Vec<(i64, String)>,
    /// (repository id, manifest digest, child digest): blobs and child manifests each manifest
    /// references.
    pub refs: Vec<(i64, String, String)>,
    /// Every blob link.
    pub links: Vec<GcLink>,
    /// Every blob row.
    pub blobs: Vec<GcBlob>,
    /// (session id, digest it is being committed as) of every open upload session.
    pub uploads: Vec<(String, Option<String>)>,
    /// Manifest digests pinned at the time of the read (by hand or by a node's report): roots
    /// of the mark in every repository.
    pub pins: std::collections::HashSet<String>,
}

fn e(op: &'static str) -> impl Fn(sqlx::Error) -> Error {
    move |source| Error::Database { op, source }
}

impl Meta {
    /// Reads the whole reference graph in one snapshot (REPEATABLE READ on PostgreSQL, one
    /// read transaction on SQLite), so the mark sees one consistent state.
    pub async fn gc_graph(&self) -> Result<GcGraph> {
        let op = "reading the reference graph";
        let mut tx = match self.dialect {
            super::Dialect::Sqlite => self.read.begin().await,
            super::Dialect::Postgres => {
                self.read
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .await
            }
        }
        .map_err(e(op))?;
        let mut g = GcGraph::default();
        for r in sqlx::query("SELECT id, name FROM repositories")
            .fetch_all(&mut *tx)
            .await
            .map_err(e(op))?
        {
            g.repos
                .insert(r.try_get(0).map_err(e(op))?, r.try_get(1).map_err(e(op))?);
        }
        for r in sqlx::query(
            "SELECT repo_id, digest, subject, last_referenced, CAST(LENGTH(content) AS BIGINT) FROM manifests",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(e(op))?
        {
            g.manifests.push(GcManifest {
                repo_id: r.try_get(0).map_err(e(op))?,
                digest: r.try_get(1).map_err(e(op))?,
                subject: r.try_get(2).map_err(e(op))?,
                last_referenced: r.try_get(3).map_err(e(op))?,
                size: to_u64(r.try_get(4).map_err(e(op))?, "manifest size")?,
            });
        }
        for r in sqlx::query("SELECT repo_id, manifest_digest FROM tags")
            .fetch_all(&mut *tx)
            .await
            .map_err(e(op))?
        {
            g.tags
                .push((r.try_get(0).map_err(e(op))?, r.try_get(1).map_err(e(op))?));
        }
        for r in sqlx::query("SELECT repo_id, manifest_digest, child_digest FROM manifest_refs")
            .fetch_all(&mut *tx)
            .await
            .map_err(e(op))?
        {
            g.refs.push((
                r.try_get(0).map_err(e(op))?,
                r.try_get(1).map_err(e(op))?,
                r.try_get(2).map_err(e(op))?,
            ));
        }
        for r in sqlx::query("SELECT repo_id, digest, last_referenced FROM repo_blobs")
            .fetch_all(&mut *tx)
            .await
            .map_err(e(op))?
        {
            g.links.push(GcLink {
                repo_id: r.try_get(0).map_err(e(op))?,
                digest: r.try_get(1).map_err(e(op))?,
                last_referenced: r.try_get(2).map_err(e(op))?,
            });
        }
        for r in sqlx::query("SELECT digest, size, last_referenced FROM blobs")
            .fetch_all(&mut *tx)
            .await
            .map_err(e(op))?
        {
            g.blobs.push(GcBlob {
                digest: r.try_get(0).map_err(e(op))?,
                size: to_u64(r.try_get(1).map_err(e(op))?, "blob size")?,
                last_referenced: r.try_get(2).map_err(e(op))?,
            });
        }
        for r in sqlx::query("SELECT id, digest FROM uploads")
            .fetch_all(&mut *tx)
            .await
            .map_err(e(op))?
        {
            g.uploads
                .push((r.try_get(0).map_err(e(op))?, r.try_get(1).map_err(e(op))?));
        }
        for r in sqlx::query("SELECT digest FROM pins WHERE expires_at IS NULL OR expires_at > $1")
            .bind(super::now_ms())
            .fetch_all(&mut *tx)
            .await
            .map_err(e(op))?
        {
            g.pins.insert(r.try_get(0).map_err(e(op))?);
        }
        tx.commit().await.map_err(e(op))?;
        Ok(g)
    }

    /// Takes the row lock of the item about to be collected (a no-op UPDATE: PostgreSQL waits
    /// for a writer holding it, and the decision that follows runs in a fresh snapshot).
    async fn gc_lock(tx: &mut Tx<'_>, sql: &'static str, repo_id: Option<i64>, digest: &str) -> Result<()> {
        let q = match repo_id {
            Some(id) => sqlx::query(sql).bind(id).bind(digest),
            None => sqlx::query(sql).bind(digest),
        };
        q.execute(&mut **tx).await.map_err(e("locking a row to collect"))?;
        Ok(())
    }

    /// Deletes an untagged manifest, if under its row lock it is still unreferenced: no tag
    /// on it, no manifest left that lists it as a child, no subject of it left in the
    /// repository, and not referenced since `cutoff` (unix milliseconds). Its reference rows go
    /// with it. Returns whether it was deleted.
    pub async fn gc_delete_manifest(&self, repo_id: i64, digest: &str, cutoff: i64) -> Result<bool> {
        let op = "collecting a manifest";
        let mut tx = self.begin().await?;
        Self::gc_lock(
            &mut tx,
            "UPDATE manifests SET last_referenced = last_referenced WHERE repo_id = $1 AND digest = $2",
            Some(repo_id),
            digest,
        )
        .await?;
        // A pinned manifest (by hand, or in use on a node) is kept like a tagged one.
        let sql = format!(
            "DELETE FROM manifests WHERE repo_id = $1 AND digest = $2 AND last_referenced < $3 \
             AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.repo_id = $1 AND t.manifest_digest = $2) \
             AND NOT EXISTS (SELECT 1 FROM manifest_refs p WHERE p.repo_id = $1 AND p.child_digest = $2) \
             AND NOT EXISTS (SELECT 1 FROM manifests s WHERE s.repo_id = manifests.repo_id AND s.digest = manifests.subject) \
             AND NOT {}",
            super::pins::pinned_sql("$2", "$4")
        );
        let r = sqlx::query(&sql)
            .bind(repo_id)
            .bind(digest)
            .bind(cutoff)
            .bind(super::now_ms())
            .execute(&mut *tx)
            .await
            .map_err(e(op))?;
        if r.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM manifest_refs WHERE repo_id = $1 AND manifest_digest = $2")
            .bind(repo_id)
            .bind(digest)
            .execute(&mut *tx)
            .await
            .map_err(e(op))?;
        self.quota_remove_by_id(&mut tx, repo_id, digest).await?;
        tx.commit().await.map_err(e(op))?;
        Ok(true)
    }

    /// Deletes a repository's link to a blob, if under its row lock no manifest of the
    /// repository references the blob and the link was not referenced since `cutoff` (unix milliseconds).
    pub async fn gc_delete_link(&self, repo_id: i64, digest: &str, cutoff: i64) -> Result<bool> {
        let op = "collecting a blob link";
        let mut tx = self.begin().await?;
        Self::gc_lock(
            &mut tx,
            "UPDATE repo_blobs SET last_referenced = last_referenced WHERE repo_id = $1 AND digest = $2",
            Some(repo_id),
            digest,
        )
        .await?;
        let r = sqlx::query(
            "DELETE FROM repo_blobs WHERE repo_id = $1 AND digest = $2 AND last_referenced < $3 \
             AND NOT EXISTS (SELECT 1 FROM manifest_refs p WHERE p.repo_id = $1 AND p.child_digest = $2)",
        )
        .bind(repo_id)
        .bind(digest)
        .bind(cutoff)
        .execute(&mut *tx)
        .await
        .map_err(e(op))?;
        if r.rows_affected() == 0 {
            return Ok(false);
        }
        self.quota_remove_by_id(&mut tx, repo_id, digest).await?;
        tx.commit().await.map_err(e(op))?;
        Ok(true)
    }

    /// Deletes a blob row if under its lock no repository links it, no upload is being
    /// committed as it, and it was not referenced since `cutoff`; then runs `delete_bytes`
    /// before committing. If the bytes cannot be deleted the row stays (rolled back).
    pub async fn gc_delete_blob<F, Fut>(&self, digest: &str, cutoff: i64, delete_bytes: F) -> Result<bool>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let op = "collecting a blob";
        let mut tx = self.begin().await?;
        Self::gc_lock(
            &mut tx,
            "UPDATE blobs SET last_referenced = last_referenced WHERE digest = $1",
            None,
            digest,
        )
        .await?;
        let r = sqlx::query(
            "DELETE FROM blobs WHERE digest = $1 AND last_referenced < $2 \
             AND NOT EXISTS (SELECT 1 FROM repo_blobs l WHERE l.digest = $1) \
             AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.digest = $1)",
        )
        .bind(digest)
        .bind(cutoff)
        .execute(&mut *tx)
        .await
        .map_err(e(op))?;
        if r.rows_affected() == 0 {
            return Ok(false);
        }
        delete_bytes().await?;
        tx.commit().await.map_err(e(op))?;
        Ok(true)
    }

    /// Deletes bytes that have no blob row (left by a crash between a collector's row delete
    /// and its commit, or by an older version): inserts a placeholder row to hold the
    /// digest's lock, runs `delete_bytes`, removes the placeholder and commits. Returns
    /// `false` (and deletes nothing) when a row exists, e.g. an upload is being committed.
    pub async fn gc_delete_orphan<F, Fut>(&self, digest: &str, delete_bytes: F) -> Result<bool>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let op = "collecting unrecorded bytes";
        let mut tx = self.begin().await?;
        let r = sqlx::query(
            "INSERT INTO blobs (digest, size, created_at, last_referenced) VALUES ($1, 0, 0, 0) \
             ON CONFLICT (digest) DO NOTHING",
        )
        .bind(digest)
        .execute(&mut *tx)
        .await
        .map_err(e(op))?;
        if r.rows_affected() == 0 {
            return Ok(false);
        }
        delete_bytes().await?;
        sqlx::query("DELETE FROM blobs WHERE digest = $1")
            .bind(digest)
            .execute(&mut *tx)
            .await
            .map_err(e(op))?;
        tx.commit().await.map_err(e(op))?;
        Ok(true)
    }

    /// Upload sessions without a chunk since `cutoff` (unix seconds, like `updated_at`).
    pub async fn expired_uploads(&self, cutoff: i64) -> Result<Vec<UploadRow>> {
        let op = "listing expired upload sessions";
        let rows = sqlx::query("SELECT id, repo, size, parts, multipart FROM uploads WHERE updated_at < $1")
            .bind(cutoff)
            .fetch_all(&self.read)
            .await
            .map_err(e(op))?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get(0).map_err(e(op))?;
                let parts: String = r.try_get(3).map_err(e(op))?;
                Ok(UploadRow {
                    repo: r.try_get(1).map_err(e(op))?,
                    size: to_u64(r.try_get(2).map_err(e(op))?, "upload size")?,
                    parts: serde_json::from_str(&parts)
                        .map_err(|err| Error::Corrupt(format!("parts of upload {id}: {err}")))?,
                    hash_state: None,
                    multipart: super::multipart_from(&id, r.try_get(4).map_err(e(op))?)?,
                    id,
                })
            })
            .collect()
    }

    /// Closes session `id` if it still had no chunk since `cutoff` (unix seconds). Returns
    /// whether it did.
    pub async fn expire_upload(&self, id: &str, cutoff: i64) -> Result<bool> {
        let r = sqlx::query("DELETE FROM uploads WHERE id = $1 AND updated_at < $2")
            .bind(id)
            .bind(cutoff)
            .execute(&self.write)
            .await
            .map_err(e("expiring an upload session"))?;
        Ok(r.rows_affected() > 0)
    }

    /// Whether session `id` exists (in any repository).
    pub async fn upload_exists(&self, id: &str) -> Result<bool> {
        self.exists(
            "SELECT CAST(1 AS BIGINT) FROM uploads WHERE id = $1",
            id,
            "looking up an upload session",
        )
        .await
    }

    /// Whether an open session is being committed as `digest`.
    pub async fn upload_committing(&self, digest: &str) -> Result<bool> {
        self.exists(
            "SELECT CAST(1 AS BIGINT) FROM uploads WHERE digest = $1 LIMIT 1",
            digest,
            "looking up an upload session",
        )
        .await
    }

    /// Whether a blob row exists for `digest`.
    pub async fn blob_recorded(&self, digest: &str) -> Result<bool> {
        self.exists(
            "SELECT CAST(1 AS BIGINT) FROM blobs WHERE digest = $1",
            digest,
            "looking up a blob",
        )
        .await
    }

    /// Whether `sql` (one `$1` parameter) finds a row; read on the write pool, so the answer
    /// reflects every committed write (the collector's re-checks depend on that).
    async fn exists(&self, sql: &'static str, arg: &str, what: &'static str) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar(sql)
            .bind(arg)
            .fetch_optional(&self.write)
            .await
            .map_err(e(what))?;
        Ok(found.is_some())
    }

    /// Test hook: makes session `id` look idle since `updated_at` (unix seconds).
    #[cfg(test)]
    pub(crate) async fn backdate_upload(&self, id: &str, updated_at: i64) -> Result<()> {
        sqlx::query("UPDATE uploads SET updated_at = $1 WHERE id = $2")
            .bind(updated_at)
            .bind(id)
            .execute(&self.write)
            .await
            .map_err(e("backdating an upload session"))?;
        Ok(())
    }
}
