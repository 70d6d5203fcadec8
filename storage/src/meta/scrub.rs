//! The scrubber's queries: manifest bodies per repository, and quarantine of a damaged blob.

use super::Meta;
use crate::error::{Error, Result};
use sqlx::Row;

impl Meta {
    /// Every manifest of repository `repo_id`: digest, media type and body.
    pub async fn scrub_manifests(&self, repo_id: i64) -> Result<Vec<(String, String, Vec<u8>)>> {
        let op = "reading manifests to scrub";
        let rows = sqlx::query("SELECT digest, media_type, content FROM manifests WHERE repo_id = $1 ORDER BY digest")
            .bind(repo_id)
            .fetch_all(&self.read)
            .await
            .map_err(Error::db(op))?;
        rows.into_iter()
            .map(|r| {
                Ok((
                    r.try_get(0).map_err(Error::db(op))?,
                    r.try_get(1).map_err(Error::db(op))?,
                    r.try_get(2).map_err(Error::db(op))?,
                ))
            })
            .collect()
    }

    /// Every tag of repository `repo_id`: name and the manifest digest it points at.
    pub async fn scrub_tags(&self, repo_id: i64) -> Result<Vec<(String, String)>> {
        let op = "reading tags to scrub";
        let rows = sqlx::query("SELECT name, manifest_digest FROM tags WHERE repo_id = $1 ORDER BY name")
            .bind(repo_id)
            .fetch_all(&self.read)
            .await
            .map_err(Error::db(op))?;
        rows.into_iter()
            .map(|r| {
                Ok((
                    r.try_get(0).map_err(Error::db(op))?,
                    r.try_get(1).map_err(Error::db(op))?,
                ))
            })
            .collect()
    }

    /// Forgets blob `digest` everywhere (its row and every repository's link), so that it
    /// answers 404 and clients push it again. Returns the repositories that linked it. The
    /// bytes are the caller's to move aside first.
    pub async fn quarantine_blob(&self, digest: &str) -> Result<Vec<String>> {
        let op = "quarantining a blob";
        let mut tx = self.begin().await?;
        let repos: Vec<String> = sqlx::query_scalar(
            "SELECT r.name FROM repo_blobs l JOIN repositories r ON r.id = l.repo_id WHERE l.digest = $1 ORDER BY r.name",
        )
        .bind(digest)
        .fetch_all(&mut *tx)
        .await
        .map_err(Error::db(op))?;
        for sql in [
            "DELETE FROM repo_blobs WHERE digest = $1",
            "DELETE FROM blobs WHERE digest = $1",
        ] {
            sqlx::query(sql)
                .bind(digest)
                .execute(&mut *tx)
                .await
                .map_err(Error::db(op))?;
        }
        tx.commit().await.map_err(Error::db(op))?;
        Ok(repos)
    }
}
