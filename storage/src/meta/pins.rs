//! Pins: manifests that retention and garbage collection keep, with everything under them.
//! A pin is made by hand (`berth-registry pin REF`, holder `pin`, until removed) or by a
//! node's report of the manifests its containers use (holder `node:<name>`, for a window after
//! each report: a node that stops reporting stops holding). Also the batched record of when
//! each manifest was last pulled.

use super::{now_ms, Meta};
use crate::error::{Error, Result};
use sqlx::Row;

/// One pin as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// The manifest's digest (pins hold it in every repository).
    pub digest: String,
    /// `pin`, or `node:<name>`.
    pub holder: String,
    /// The repository it was named in, when known (for display).
    pub repo: Option<String>,
    /// Unix milliseconds after which it stops counting; `None`: until removed.
    pub expires_at: Option<i64>,
    /// Unix milliseconds of its last update (a node's last report of it).
    pub updated_at: i64,
}

fn e(op: &'static str) -> impl Fn(sqlx::Error) -> Error {
    move |source| Error::Database { op, source }
}

/// The SQL condition "a pin holds `digest_sql` at `$now`", shared by every re-check that must
/// keep pinned manifests (the collector's and retention's).
pub(crate) fn pinned_sql(digest_sql: &str, now: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM pins p WHERE p.digest = {digest_sql} AND (p.expires_at IS NULL OR p.expires_at > {now}))"
    )
}

impl Meta {
    /// Pins `digest` (holder `holder`) until `expires_at` (unix milliseconds; `None`: until
    /// removed). Pinning again updates the expiry.
    pub async fn pin(&self, digest: &str, holder: &str, repo: Option<&str>, expires_at: Option<i64>) -> Result<()> {
        sqlx::query(
            "INSERT INTO pins (digest, holder, repo, expires_at, updated_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (digest, holder) DO UPDATE SET repo = excluded.repo, expires_at = excluded.expires_at, \
             updated_at = excluded.updated_at",
        )
        .bind(digest)
        .bind(holder)
        .bind(repo)
        .bind(expires_at)
        .bind(now_ms())
        .execute(&self.write)
        .await
        .map_err(e("pinning a manifest"))?;
        Ok(())
    }

    /// Removes a pin. Returns whether it existed.
    pub async fn unpin(&self, digest: &str, holder: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM pins WHERE digest = $1 AND holder = $2")
            .bind(digest)
            .bind(holder)
            .execute(&self.write)
            .await
            .map_err(e("unpinning a manifest"))?;
        Ok(r.rows_affected() > 0)
    }

    /// Records a node's report: each of `manifests` (repository, digest) is in use there and
    /// stays pinned until `window_ms` from now; pins of the node past their window are purged.
    /// Digests the node no longer reports are not unpinned at once: they keep until their
    /// window passes, so a container removed a moment ago can still be started again.
    pub async fn report_in_use(&self, node: &str, manifests: &[(String, String)], window_ms: i64) -> Result<()> {
        let op = "recording a node's report";
        let holder = format!("node:{node}");
        let now = now_ms();
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM pins WHERE holder = $1 AND expires_at IS NOT NULL AND expires_at <= $2")
            .bind(&holder)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(e(op))?;
        for (repo, digest) in manifests {
            sqlx::query(
                "INSERT INTO pins (digest, holder, repo, expires_at, updated_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (digest, holder) DO UPDATE SET repo = excluded.repo, expires_at = excluded.expires_at, \
                 updated_at = excluded.updated_at",
            )
            .bind(digest)
            .bind(&holder)
            .bind(repo)
            .bind(now.saturating_add(window_ms))
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(e(op))?;
        }
        tx.commit().await.map_err(e(op))
    }

    /// Every pin, in force or not, by digest and holder.
    pub async fn pins(&self) -> Result<Vec<Pin>> {
        let op = "listing pins";
        let rows = sqlx::query("SELECT digest, holder, repo, expires_at, updated_at FROM pins ORDER BY digest, holder")
            .fetch_all(&self.read)
            .await
            .map_err(e(op))?;
        rows.iter()
            .map(|r| {
                Ok(Pin {
                    digest: r.try_get(0).map_err(e(op))?,
                    holder: r.try_get(1).map_err(e(op))?,
                    repo: r.try_get(2).map_err(e(op))?,
                    expires_at: r.try_get(3).map_err(e(op))?,
                    updated_at: r.try_get(4).map_err(e(op))?,
                })
            })
            .collect()
    }

    /// Records pulls, one transaction for the batch: (repository, manifest digest, unix
    /// milliseconds). A manifest's time only ever moves forward.
    pub async fn record_pulls(&self, pulls: &[(String, String, i64)]) -> Result<()> {
        if pulls.is_empty() {
            return Ok(());
        }
        let op = "recording pulls";
        let mut tx = self.begin().await?;
        for (repo, digest, at) in pulls {
            sqlx::query(
                "UPDATE manifests SET last_pulled = $1 WHERE repo_id = (SELECT id FROM repositories WHERE name = $2) \
                 AND digest = $3 AND (last_pulled IS NULL OR last_pulled < $1)",
            )
            .bind(at)
            .bind(repo)
            .bind(digest)
            .execute(&mut *tx)
            .await
            .map_err(e(op))?;
        }
        tx.commit().await.map_err(e(op))
    }
}
