//! The metadata repository: repositories, blobs and their per-repository links, manifests,
//! tags, referrers and upload sessions, in SQL via sqlx.
//!
//! SQLite is the embedded default. It takes one writer at a time, so writes go through a
//! one-connection pool (in-process queueing instead of `SQLITE_BUSY` lock-upgrade failures) and
//! reads through a pool of readers that WAL mode lets run beside the writer.
//!
//! Queries sit next to their use and are written portably (`$n` placeholders, no SQLite-only
//! functions) so the PostgreSQL backend can share them.

use crate::error::{Error, Result};
use berth_oci::manifest::ParsedManifest;
use berth_oci::{Descriptor, Digest};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Executor as _, Row};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod auth;
mod gc;
mod pins;
mod policy;
mod quota;
mod retention;
mod scrub;
pub use auth::LoginFailures;
pub use gc::{GcBlob, GcGraph, GcLink, GcManifest};
pub use pins::Pin;
pub use policy::{NoPolicy, Policy, Quota};
pub use quota::QuotaUsage;
pub use retention::RetentionTag;

type Tx<'a> = sqlx::Transaction<'a, sqlx::Any>;

/// Which SQL database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `sqlite:` URLs.
    Sqlite,
    /// `postgres:` / `postgresql:` URLs.
    Postgres,
}

impl Dialect {
    /// The dialect of a database URL.
    pub fn of(url: &str) -> Result<Dialect> {
        if url.starts_with("sqlite:") {
            Ok(Dialect::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Dialect::Postgres)
        } else {
            Err(Error::Database {
                op: "choosing the database",
                source: sqlx::Error::Configuration(
                    format!("unsupported database URL {url:?}: use sqlite://PATH or postgres://USER@HOST/DB").into(),
                ),
            })
        }
    }
}

/// The embedded migrations of a dialect, in order. Built by hand from `include_str!` rather
/// than with `sqlx::migrate!`, which would pull sqlx's proc-macro stack into every build.
fn migrator(dialect: Dialect) -> Migrator {
    let m = |version, description, sql| {
        Migration::new(
            version,
            Cow::Borrowed(description),
            MigrationType::Simple,
            Cow::Borrowed(sql),
            false,
        )
    };
    let migrations = match dialect {
        Dialect::Sqlite => vec![
            m(1, "init", include_str!("../../migrations/sqlite/0001_init.sql")),
            m(2, "users", include_str!("../../migrations/sqlite/0002_users.sql")),
            m(3, "gc", include_str!("../../migrations/sqlite/0003_gc.sql")),
            m(
                4,
                "multipart",
                include_str!("../../migrations/sqlite/0004_multipart.sql"),
            ),
            m(
                5,
                "shared auth",
                include_str!("../../migrations/sqlite/0005_shared_auth.sql"),
            ),
            m(
                8,
                "governance",
                include_str!("../../migrations/sqlite/0008_governance.sql"),
            ),
        ],
        Dialect::Postgres => vec![
            m(1, "init", include_str!("../../migrations/postgres/0001_init.sql")),
            m(2, "users", include_str!("../../migrations/postgres/0002_users.sql")),
            m(3, "gc", include_str!("../../migrations/postgres/0003_gc.sql")),
            m(
                4,
                "multipart",
                include_str!("../../migrations/postgres/0004_multipart.sql"),
            ),
            m(
                5,
                "shared auth",
                include_str!("../../migrations/postgres/0005_shared_auth.sql"),
            ),
            m(
                8,
                "governance",
                include_str!("../../migrations/postgres/0008_governance.sql"),
            ),
        ],
    };
    Migrator {
        migrations: Cow::Owned(migrations),
        ..Migrator::DEFAULT
    }
}

/// A SQLite URL with `mode` set (`rwc`: create the file if missing; `ro`), unless in memory.
fn sqlite_url(url: &str, mode: &str) -> String {
    if url.contains(":memory:") || url.contains("mode=") {
        return url.to_owned();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}mode={mode}")
}

/// Unix milliseconds: the unit of `last_referenced`, fine enough that a collector with no
/// grace period still keeps what was referenced after it started.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn to_u64(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::Corrupt(format!("negative {what}: {v}")))
}

fn parse_digest(s: &str) -> Result<Digest> {
    s.parse()
        .map_err(|_| Error::Corrupt(format!("stored digest {s:?} is invalid")))
}

/// A manifest as stored.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    /// Its digest (of `content`).
    pub digest: Digest,
    /// Media type given or inferred at push.
    pub media_type: String,
    /// The exact bytes pushed; `None` when only the head was asked for.
    pub content: Option<Vec<u8>>,
    /// Length of the content.
    pub size: u64,
}

/// How a manifest is asked for.
#[derive(Debug, Clone)]
pub enum Reference<'a> {
    /// By tag.
    Tag(&'a str),
    /// By digest.
    Digest(&'a Digest),
}

/// An open upload session's persisted state.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Part {
    /// Object key of the staged bytes.
    pub key: String,
    /// Their length.
    pub size: u64,
}

/// A part uploaded through the backend's multipart API.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct MultipartPart {
    /// What the backend answered for it (S3's ETag), needed to complete the upload.
    pub content_id: String,
    /// Its length.
    pub size: u64,
}

/// A session's multipart upload on the object store.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Multipart {
    /// Object key the upload writes.
    pub key: String,
    /// The backend's upload id.
    pub id: String,
    /// Parts uploaded so far, in order; their bytes come before the staged `parts`.
    pub parts: Vec<MultipartPart>,
}

/// Upload session row.
#[derive(Debug, Clone)]
pub struct UploadRow {
    /// Session id.
    pub id: String,
    /// Repository it was opened for.
    pub repo: String,
    /// Bytes received so far.
    pub size: u64,
    /// Staged parts, in order (in a multipart session: the bytes received after the
    /// multipart parts, too few yet for a part of their own).
    pub parts: Vec<Part>,
    /// Saved hash state (see [`crate::hashstate`]).
    pub hash_state: Option<Vec<u8>>,
    /// The multipart upload, once the session has one.
    pub multipart: Option<Multipart>,
}

fn multipart_json(m: &Option<Multipart>) -> Result<Option<String>> {
    m.as_ref()
        .map(|m| serde_json::to_string(m).map_err(|e| Error::Corrupt(e.to_string())))
        .transpose()
}

pub(crate) fn multipart_from(id: &str, json: Option<String>) -> Result<Option<Multipart>> {
    json.map(|j| serde_json::from_str(&j).map_err(|e| Error::Corrupt(format!("multipart upload of session {id}: {e}"))))
        .transpose()
}

/// The metadata repository.
#[derive(Clone)]
pub struct Meta {
    read: AnyPool,
    write: AnyPool,
    dialect: Dialect,
    /// Quotas and immutable tags in force ([`Meta::with_policy`]).
    policy: std::sync::Arc<dyn Policy>,
}

impl Meta {
    /// Opens (creating if needed) the database at `url` (`sqlite://path`, `sqlite::memory:` or
    /// `postgres://…`) and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::of(url)?;
        // SQLite settings for every new connection: the writer turns on WAL (so readers run
        // beside it) with FULL sync (every commit is synced to the WAL before it returns: a
        // 2xx means the row survives a power cut; NORMAL would only promise consistency); all
        // wait when busy instead of failing at once. PostgreSQL's defaults (fsync on,
        // synchronous_commit on) already make a commit durable.
        let open = |max: u32, url: String, pragmas: &'static str| async move {
            AnyPoolOptions::new()
                .max_connections(max)
                .acquire_timeout(Duration::from_secs(30))
                .after_connect(move |conn, _| {
                    Box::pin(async move {
                        if !pragmas.is_empty() {
                            conn.execute(pragmas).await?;
                        }
                        Ok(())
                    })
                })
                .connect(&url)
                .await
                .map_err(Error::db("opening the database"))
        };
        let pool = match dialect {
            Dialect::Sqlite => {
                open(
                    1,
                    sqlite_url(url, "rwc"),
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000;",
                )
                .await?
            }
            Dialect::Postgres => open(16, url.to_owned(), "").await?,
        };
        migrator(dialect).run(&pool).await.map_err(|e| Error::Database {
            op: "applying migrations",
            source: e.into(),
        })?;
        // One writer for SQLite (an in-memory database exists per connection, so it reads
        // through the writer too); PostgreSQL's pool serves both.
        let read = match dialect {
            Dialect::Sqlite if !url.contains(":memory:") => {
                open(8, sqlite_url(url, "ro"), "PRAGMA busy_timeout = 10000;").await?
            }
            _ => pool.clone(),
        };
        Ok(Meta {
            read,
            write: pool,
            dialect,
            policy: std::sync::Arc::new(NoPolicy),
        })
    }

    /// The database in use.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Checks the database answers (readiness).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.read)
            .await
            .map_err(Error::db("ping"))?;
        Ok(())
    }

    async fn repo_id(&self, repo: &str) -> Result<Option<i64>> {
        sqlx::query_scalar("SELECT id FROM repositories WHERE name = $1")
            .bind(repo)
            .fetch_optional(&self.read)
            .await
            .map_err(Error::db("looking up a repository"))
    }

    async fn ensure_repo(tx: &mut Tx<'_>, repo: &str) -> Result<i64> {
        sqlx::query("INSERT INTO repositories (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(repo)
            .bind(now())
            .execute(&mut **tx)
            .await
            .map_err(Error::db("creating a repository"))?;
        sqlx::query_scalar("SELECT id FROM repositories WHERE name = $1")
            .bind(repo)
            .fetch_one(&mut **tx)
            .await
            .map_err(Error::db("creating a repository"))
    }

    /// A write transaction. On SQLite it takes the write lock at once (`BEGIN IMMEDIATE`): a
    /// deferred transaction that read first fails with `SQLITE_BUSY` when another process (a
    /// `berth-registry gc` beside `serve`) wrote in between, and no busy timeout can save it.
    async fn begin(&self) -> Result<Tx<'_>> {
        match self.dialect {
            Dialect::Sqlite => self.write.begin_with("BEGIN IMMEDIATE").await,
            Dialect::Postgres => self.write.begin().await,
        }
        .map_err(Error::db("starting a transaction"))
    }

    // ---- blobs -------------------------------------------------------------------------

    /// Size of `digest` if `repo` links it.
    pub async fn linked_blob(&self, repo: &str, digest: &Digest) -> Result<Option<u64>> {
        let size: Option<i64> = sqlx::query_scalar(
            "SELECT b.size FROM repo_blobs l JOIN repositories r ON r.id = l.repo_id \
             JOIN blobs b ON b.digest = l.digest WHERE r.name = $1 AND l.digest = $2",
        )
        .bind(repo)
        .bind(digest.to_string())
        .fetch_optional(&self.read)
        .await
        .map_err(Error::db("looking up a blob link"))?;
        size.map(|s| to_u64(s, "blob size")).transpose()
    }

    /// Records the blob row (or touches it) and takes its row lock for the rest of the
    /// transaction: the collector locks the same row before deciding, so the two serialize.
    /// Every writer that is about to rely on a blob's bytes goes through here first (lock
    /// order: blob row, then links, then manifests).
    async fn touch_blob(tx: &mut Tx<'_>, digest: &Digest, size: u64) -> Result<()> {
        sqlx::query(
            "INSERT INTO blobs (digest, size, created_at, last_referenced) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (digest) DO UPDATE SET last_referenced = excluded.last_referenced",
        )
        .bind(digest.to_string())
        .bind(size as i64)
        .bind(now())
        .bind(now_ms())
        .execute(&mut **tx)
        .await
        .map_err(Error::db("recording a blob"))?;
        Ok(())
    }

    /// Records the committed blob and links it into `repo`.
    pub async fn link_blob(&self, repo: &str, digest: &Digest, size: u64) -> Result<()> {
        let mut tx = self.begin().await?;
        let repo_id = Self::ensure_repo(&mut tx, repo).await?;
        Self::touch_blob(&mut tx, digest, size).await?;
        if Self::link(&mut tx, repo_id, digest).await? {
            self.quota_add(&mut tx, repo, &digest.to_string(), size).await?;
        }
        tx.commit().await.map_err(Error::db("recording a blob"))
    }

    /// First step of committing upload `id` as blob `digest`, before its bytes move: records
    /// the digest on the session (which keeps the blob from the collector until
    /// [`Meta::link_upload`]) and the blob row. Only if the session still holds `size`
    /// bytes (no chunk landed meanwhile); returns whether it did.
    ///
    /// Why before the bytes: a collector that deleted the row and is deleting the bytes holds
    /// the row's lock until it is done, so once this returns, the bytes are either gone for
    /// good (the caller writes its own) or protected by the session.
    pub async fn reserve_upload(&self, id: &str, size: u64, digest: &Digest) -> Result<bool> {
        let mut tx = self.begin().await?;
        let r = sqlx::query("UPDATE uploads SET digest = $1, updated_at = $2 WHERE id = $3 AND size = $4")
            .bind(digest.to_string())
            .bind(now())
            .bind(id)
            .bind(size as i64)
            .execute(&mut *tx)
            .await
            .map_err(Error::db("committing an upload"))?;
        if r.rows_affected() != 1 {
            return Ok(false);
        }
        Self::touch_blob(&mut tx, digest, size).await?;
        let repo: String = sqlx::query_scalar("SELECT repo FROM uploads WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .map_err(Error::db("committing an upload"))?;
        self.quota_precheck(&mut tx, &repo, &digest.to_string(), size).await?;
        tx.commit().await.map_err(Error::db("committing an upload"))?;
        Ok(true)
    }

    /// Last step of committing an upload, once its bytes are in place: links the blob into
    /// `repo` and closes session `id`, in one transaction.
    pub async fn link_upload(&self, id: &str, repo: &str, digest: &Digest, size: u64) -> Result<()> {
        let mut tx = self.begin().await?;
        let repo_id = Self::ensure_repo(&mut tx, repo).await?;
        Self::touch_blob(&mut tx, digest, size).await?;
        if Self::link(&mut tx, repo_id, digest).await? {
            self.quota_add(&mut tx, repo, &digest.to_string(), size).await?;
        }
        sqlx::query("DELETE FROM uploads WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(Error::db("closing an upload session"))?;
        tx.commit().await.map_err(Error::db("committing an upload"))
    }

    /// Links (or touches the link of) a blob into a repository; returns whether the link is
    /// new (quotas count it then).
    async fn link(tx: &mut Tx<'_>, repo_id: i64, digest: &Digest) -> Result<bool> {
        let r = sqlx::query(
            "INSERT INTO repo_blobs (repo_id, digest, created_at, last_referenced) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (repo_id, digest) DO NOTHING",
        )
        .bind(repo_id)
        .bind(digest.to_string())
        .bind(now())
        .bind(now_ms())
        .execute(&mut **tx)
        .await
        .map_err(Error::db("linking a blob"))?;
        if r.rows_affected() == 1 {
            return Ok(true);
        }
        sqlx::query("UPDATE repo_blobs SET last_referenced = $1 WHERE repo_id = $2 AND digest = $3")
            .bind(now_ms())
            .bind(repo_id)
            .bind(digest.to_string())
            .execute(&mut **tx)
            .await
            .map_err(Error::db("linking a blob"))?;
        Ok(false)
    }

    /// Links into `repo` a blob that `from` links (cross-repository mount). Returns the size,
    /// or `None` when `from` does not have it — then nothing changes.
    ///
    /// The blob row and the source link are locked (touched) in the transaction that adds the
    /// new link, so a collector cannot remove them between the check and the link.
    pub async fn mount_blob(&self, repo: &str, from: &str, digest: &Digest) -> Result<Option<u64>> {
        let mut tx = self.begin().await?;
        let size: Option<i64> = sqlx::query_scalar(
            "UPDATE blobs SET last_referenced = $1 WHERE digest = $2 \
             AND EXISTS (SELECT 1 FROM repo_blobs l JOIN repositories r ON r.id = l.repo_id WHERE r.name = $3 AND l.digest = $2) \
             RETURNING size",
        )
        .bind(now_ms())
        .bind(digest.to_string())
        .bind(from)
        .fetch_optional(&mut *tx)
        .await
        .map_err(Error::db("mounting a blob"))?;
        let Some(size) = size else {
            return Ok(None);
        };
        let source = sqlx::query(
            "UPDATE repo_blobs SET last_referenced = $1 WHERE digest = $2 \
             AND repo_id = (SELECT id FROM repositories WHERE name = $3)",
        )
        .bind(now_ms())
        .bind(digest.to_string())
        .bind(from)
        .execute(&mut *tx)
        .await
        .map_err(Error::db("mounting a blob"))?;
        if source.rows_affected() != 1 {
            // The source link went between the two statements (PostgreSQL sees each
            // statement's own snapshot): not mountable.
            return Ok(None);
        }
        let repo_id = Self::ensure_repo(&mut tx, repo).await?;
        if Self::link(&mut tx, repo_id, digest).await? {
            self.quota_add(&mut tx, repo, &digest.to_string(), to_u64(size, "blob size")?)
                .await?;
        }
        tx.commit().await.map_err(Error::db("mounting a blob"))?;
        Ok(Some(to_u64(size, "blob size")?))
    }

    /// Removes `repo`'s link to a blob. The bytes stay until garbage collection finds no
    /// reference, so a concurrent push that relies on them is not broken.
    pub async fn unlink_blob(&self, repo: &str, digest: &Digest) -> Result<bool> {
        let mut tx = self.begin().await?;
        let r = sqlx::query(
            "DELETE FROM repo_blobs WHERE digest = $1 AND repo_id = (SELECT id FROM repositories WHERE name = $2)",
        )
        .bind(digest.to_string())
        .bind(repo)
        .execute(&mut *tx)
        .await
        .map_err(Error::db("unlinking a blob"))?;
        if r.rows_affected() == 0 {
            return Ok(false);
        }
        self.quota_remove(&mut tx, repo, &digest.to_string()).await?;
        tx.commit().await.map_err(Error::db("unlinking a blob"))?;
        Ok(true)
    }

    // ---- manifests ---------------------------------------------------------------------

    /// Stores a manifest (and moves `tag` to it). Every referenced blob must be linked into
    /// `repo` and every child manifest present in it; the subject need not exist.
    pub async fn put_manifest(
        &self,
        repo: &str,
        digest: &Digest,
        parsed: &ParsedManifest,
        content: &[u8],
        tag: Option<&str>,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let repo_id = Self::ensure_repo(&mut tx, repo).await?;
        // Blobs must be linked into the repository; index children must be manifests in it.
        // Each check is an UPDATE that touches the row: it takes the row's lock, which the
        // collector takes too before deciding, so a reference is either seen by the collector
        // or made to something the collector has not deleted. Sorted, so that two puts lock
        // shared rows in one order and cannot deadlock.
        let mut blob_refs: Vec<&Digest> = parsed.blobs.iter().map(|d| &d.digest).collect();
        let mut manifest_refs: Vec<&Digest> = parsed.manifests.iter().map(|d| &d.digest).collect();
        blob_refs.sort();
        blob_refs.dedup();
        manifest_refs.sort();
        manifest_refs.dedup();
        let (now, now_ms) = (now(), now_ms());
        let checks = [
            (
                "UPDATE repo_blobs SET last_referenced = $1 WHERE repo_id = $2 AND digest = $3",
                &blob_refs,
            ),
            (
                "UPDATE manifests SET last_referenced = $1 WHERE repo_id = $2 AND digest = $3",
                &manifest_refs,
            ),
        ];
        for (sql, refs) in checks {
            for r in refs {
                let found = sqlx::query(sql)
                    .bind(now_ms)
                    .bind(repo_id)
                    .bind(r.to_string())
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::db("checking manifest references"))?;
                if found.rows_affected() == 0 {
                    return Err(Error::ManifestBlobUnknown {
                        repo: repo.to_owned(),
                        digest: (*r).clone(),
                    });
                }
            }
        }
        let annotations = match &parsed.annotations {
            Some(a) => Some(serde_json::to_string(a).map_err(|e| Error::Corrupt(e.to_string()))?),
            None => None,
        };
        let inserted = sqlx::query(
            "INSERT INTO manifests (repo_id, digest, media_type, artifact_type, subject, annotations, content, created_at, last_referenced) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (repo_id, digest) DO NOTHING",
        )
        .bind(repo_id)
        .bind(digest.to_string())
        .bind(&parsed.media_type)
        .bind(parsed.artifact_type.as_deref())
        .bind(parsed.subject.as_ref().map(|s| s.digest.to_string()))
        .bind(annotations)
        .bind(content)
        .bind(now)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(Error::db("storing a manifest"))?;
        if inserted.rows_affected() == 1 {
            self.quota_add(&mut tx, repo, &digest.to_string(), content.len() as u64)
                .await?;
        } else {
            sqlx::query("UPDATE manifests SET last_referenced = $1 WHERE repo_id = $2 AND digest = $3")
                .bind(now_ms)
                .bind(repo_id)
                .bind(digest.to_string())
                .execute(&mut *tx)
                .await
                .map_err(Error::db("storing a manifest"))?;
        }
        for child in parsed.blobs.iter().chain(&parsed.manifests) {
            sqlx::query(
                "INSERT INTO manifest_refs (repo_id, manifest_digest, child_digest) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(repo_id)
            .bind(digest.to_string())
            .bind(child.digest.to_string())
            .execute(&mut *tx)
            .await
            .map_err(Error::db("storing manifest references"))?;
        }
        if let Some(tag) = tag.filter(|t| self.policy.immutable(repo, t)) {
            Self::claim_immutable(&mut tx, repo, repo_id, tag, digest, now).await?;
        } else if let Some(tag) = tag {
            Self::touch_tagged(&mut tx, repo_id, tag, now_ms).await?;
            sqlx::query(
                "INSERT INTO tags (repo_id, name, manifest_digest, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (repo_id, name) DO UPDATE SET manifest_digest = excluded.manifest_digest, updated_at = excluded.updated_at",
            )
            .bind(repo_id)
            .bind(tag)
            .bind(digest.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(Error::db("tagging a manifest"))?;
        }
        tx.commit().await.map_err(Error::db("storing a manifest"))
    }

    /// Touches the manifest `tag` points at, before the tag moves or goes: its grace period
    /// counts from when it lost its tag, so a client that resolved the tag a moment ago can
    /// still pull what it named.
    async fn touch_tagged(tx: &mut Tx<'_>, repo_id: i64, tag: &str, now_ms: i64) -> Result<()> {
        sqlx::query(
            "UPDATE manifests SET last_referenced = $1 WHERE repo_id = $2 \
             AND digest = (SELECT manifest_digest FROM tags WHERE repo_id = $2 AND name = $3)",
        )
        .bind(now_ms)
        .bind(repo_id)
        .bind(tag)
        .execute(&mut **tx)
        .await
        .map_err(Error::db("moving a tag"))?;
        Ok(())
    }

    /// Points immutable `tag` at `digest` if it names nothing yet; fails with
    /// [`Error::ImmutableTag`] if it names another manifest. An insert that does nothing on
    /// conflict, then a read: of two pushes racing to create the tag, the second waits for the
    /// first's row and then sees it, so an immutable tag is set exactly once.
    async fn claim_immutable(
        tx: &mut Tx<'_>,
        repo: &str,
        repo_id: i64,
        tag: &str,
        digest: &Digest,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO tags (repo_id, name, manifest_digest, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (repo_id, name) DO NOTHING",
        )
        .bind(repo_id)
        .bind(tag)
        .bind(digest.to_string())
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(Error::db("tagging a manifest"))?;
        let current: String = sqlx::query_scalar("SELECT manifest_digest FROM tags WHERE repo_id = $1 AND name = $2")
            .bind(repo_id)
            .bind(tag)
            .fetch_one(&mut **tx)
            .await
            .map_err(Error::db("tagging a manifest"))?;
        if current != digest.to_string() {
            return Err(Error::ImmutableTag {
                repo: repo.to_owned(),
                tag: tag.to_owned(),
                digest: current,
            });
        }
        Ok(())
    }

    /// A manifest by tag or digest; with its content when `with_content`.
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: Reference<'_>,
        with_content: bool,
    ) -> Result<StoredManifest> {
        let unknown = || Error::ManifestUnknown {
            repo: repo.to_owned(),
            reference: match &reference {
                Reference::Tag(t) => (*t).to_owned(),
                Reference::Digest(d) => d.to_string(),
            },
        };
        let (sql, key) = match (&reference, with_content) {
            (Reference::Tag(t), true) => (
                "SELECT m.digest, m.media_type, m.content, CAST(LENGTH(m.content) AS BIGINT) FROM tags t \
                 JOIN repositories r ON r.id = t.repo_id \
                 JOIN manifests m ON m.repo_id = t.repo_id AND m.digest = t.manifest_digest \
                 WHERE r.name = $1 AND t.name = $2",
                (*t).to_owned(),
            ),
            (Reference::Tag(t), false) => (
                "SELECT m.digest, m.media_type, NULL, CAST(LENGTH(m.content) AS BIGINT) FROM tags t \
                 JOIN repositories r ON r.id = t.repo_id \
                 JOIN manifests m ON m.repo_id = t.repo_id AND m.digest = t.manifest_digest \
                 WHERE r.name = $1 AND t.name = $2",
                (*t).to_owned(),
            ),
            (Reference::Digest(d), true) => (
                "SELECT m.digest, m.media_type, m.content, CAST(LENGTH(m.content) AS BIGINT) FROM manifests m \
                 JOIN repositories r ON r.id = m.repo_id WHERE r.name = $1 AND m.digest = $2",
                d.to_string(),
            ),
            (Reference::Digest(d), false) => (
                "SELECT m.digest, m.media_type, NULL, CAST(LENGTH(m.content) AS BIGINT) FROM manifests m \
                 JOIN repositories r ON r.id = m.repo_id WHERE r.name = $1 AND m.digest = $2",
                d.to_string(),
            ),
        };
        let row = sqlx::query(sql)
            .bind(repo)
            .bind(key)
            .fetch_optional(&self.read)
            .await
            .map_err(Error::db("reading a manifest"))?
            .ok_or_else(unknown)?;
        let digest: String = row.try_get(0).map_err(Error::db("reading a manifest"))?;
        Ok(StoredManifest {
            digest: parse_digest(&digest)?,
            media_type: row.try_get(1).map_err(Error::db("reading a manifest"))?,
            content: row.try_get(2).map_err(Error::db("reading a manifest"))?,
            size: to_u64(
                row.try_get(3).map_err(Error::db("reading a manifest"))?,
                "manifest size",
            )?,
        })
    }

    /// Deletes a manifest by digest, with every tag pointing at it.
    pub async fn delete_manifest(&self, repo: &str, digest: &Digest) -> Result<()> {
        let unknown = || Error::ManifestUnknown {
            repo: repo.to_owned(),
            reference: digest.to_string(),
        };
        let mut tx = self.begin().await?;
        let repo_id: i64 = sqlx::query_scalar("SELECT id FROM repositories WHERE name = $1")
            .bind(repo)
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::db("deleting a manifest"))?
            .ok_or_else(unknown)?;
        let d = digest.to_string();
        let names: Vec<String> =
            sqlx::query_scalar("SELECT name FROM tags WHERE repo_id = $1 AND manifest_digest = $2")
                .bind(repo_id)
                .bind(&d)
                .fetch_all(&mut *tx)
                .await
                .map_err(Error::db("deleting a manifest"))?;
        if let Some(tag) = names.iter().find(|t| self.policy.immutable(repo, t)) {
            return Err(Error::ImmutableTag {
                repo: repo.to_owned(),
                tag: tag.clone(),
                digest: d,
            });
        }
        let gone = sqlx::query("DELETE FROM manifests WHERE repo_id = $1 AND digest = $2")
            .bind(repo_id)
            .bind(&d)
            .execute(&mut *tx)
            .await
            .map_err(Error::db("deleting a manifest"))?;
        if gone.rows_affected() == 0 {
            return Err(unknown());
        }
        for sql in [
            "DELETE FROM tags WHERE repo_id = $1 AND manifest_digest = $2",
            "DELETE FROM manifest_refs WHERE repo_id = $1 AND manifest_digest = $2",
        ] {
            sqlx::query(sql)
                .bind(repo_id)
                .bind(&d)
                .execute(&mut *tx)
                .await
                .map_err(Error::db("deleting a manifest"))?;
        }
        self.quota_remove(&mut tx, repo, &d).await?;
        tx.commit().await.map_err(Error::db("deleting a manifest"))
    }

    /// Deletes a tag; the manifest stays, reachable by digest (until the collector finds it
    /// untagged for longer than its grace period).
    pub async fn delete_tag(&self, repo: &str, tag: &str) -> Result<()> {
        let unknown = || Error::ManifestUnknown {
            repo: repo.to_owned(),
            reference: tag.to_owned(),
        };
        let mut tx = self.begin().await?;
        let repo_id: i64 = sqlx::query_scalar("SELECT id FROM repositories WHERE name = $1")
            .bind(repo)
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::db("deleting a tag"))?
            .ok_or_else(unknown)?;
        if self.policy.immutable(repo, tag) {
            let current: Option<String> =
                sqlx::query_scalar("SELECT manifest_digest FROM tags WHERE repo_id = $1 AND name = $2")
                    .bind(repo_id)
                    .bind(tag)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(Error::db("deleting a tag"))?;
            let digest = current.ok_or_else(unknown)?;
            return Err(Error::ImmutableTag {
                repo: repo.to_owned(),
                tag: tag.to_owned(),
                digest,
            });
        }
        Self::touch_tagged(&mut tx, repo_id, tag, now_ms()).await?;
        let r = sqlx::query("DELETE FROM tags WHERE repo_id = $1 AND name = $2")
            .bind(repo_id)
            .bind(tag)
            .execute(&mut *tx)
            .await
            .map_err(Error::db("deleting a tag"))?;
        if r.rows_affected() == 0 {
            return Err(unknown());
        }
        tx.commit().await.map_err(Error::db("deleting a tag"))
    }

    /// Up to `n` tags of `repo` after `last`, in lexical (byte) order.
    pub async fn tags(&self, repo: &str, n: u32, last: Option<&str>) -> Result<Vec<String>> {
        let repo_id = self
            .repo_id(repo)
            .await?
            .ok_or_else(|| Error::NameUnknown { repo: repo.to_owned() })?;
        sqlx::query_scalar("SELECT name FROM tags WHERE repo_id = $1 AND name > $2 ORDER BY name LIMIT $3")
            .bind(repo_id)
            .bind(last.unwrap_or(""))
            .bind(i64::from(n))
            .fetch_all(&self.read)
            .await
            .map_err(Error::db("listing tags"))
    }

    /// Up to `n` repository names after `last`, in lexical order.
    pub async fn catalog(&self, n: u32, last: Option<&str>) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT name FROM repositories WHERE name > $1 ORDER BY name LIMIT $2")
            .bind(last.unwrap_or(""))
            .bind(i64::from(n))
            .fetch_all(&self.read)
            .await
            .map_err(Error::db("listing repositories"))
    }

    /// Manifests in `repo` whose subject is `digest`, optionally of one artifact type.
    pub async fn referrers(&self, repo: &str, digest: &Digest, artifact_type: Option<&str>) -> Result<Vec<Descriptor>> {
        let rows = sqlx::query(
            "SELECT m.digest, m.media_type, m.artifact_type, m.annotations, CAST(LENGTH(m.content) AS BIGINT) FROM manifests m \
             JOIN repositories r ON r.id = m.repo_id \
             WHERE r.name = $1 AND m.subject = $2 AND (CAST($3 AS TEXT) IS NULL OR m.artifact_type = CAST($3 AS TEXT)) ORDER BY m.digest",
        )
        .bind(repo)
        .bind(digest.to_string())
        .bind(artifact_type)
        .fetch_all(&self.read)
        .await
        .map_err(Error::db("listing referrers"))?;
        rows.into_iter()
            .map(|row| {
                let d: String = row.try_get(0).map_err(Error::db("listing referrers"))?;
                let annotations: Option<String> = row.try_get(3).map_err(Error::db("listing referrers"))?;
                let annotations = match annotations {
                    Some(a) => Some(
                        serde_json::from_str::<BTreeMap<String, String>>(&a)
                            .map_err(|e| Error::Corrupt(format!("annotations of {d}: {e}")))?,
                    ),
                    None => None,
                };
                Ok(Descriptor {
                    media_type: row.try_get(1).map_err(Error::db("listing referrers"))?,
                    digest: parse_digest(&d)?,
                    size: to_u64(row.try_get(4).map_err(Error::db("listing referrers"))?, "manifest size")?,
                    artifact_type: row.try_get(2).map_err(Error::db("listing referrers"))?,
                    annotations,
                    urls: None,
                    platform: None,
                })
            })
            .collect()
    }

    // ---- upload sessions ---------------------------------------------------------------

    /// Opens a session.
    pub async fn create_upload(&self, id: &str, repo: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO uploads (id, repo, size, parts, hash_state, created_at, updated_at) \
             VALUES ($1, $2, 0, '[]', NULL, $3, $3)",
        )
        .bind(id)
        .bind(repo)
        .bind(now())
        .execute(&self.write)
        .await
        .map_err(Error::db("opening an upload session"))?;
        Ok(())
    }

    /// A session of `repo`.
    pub async fn get_upload(&self, repo: &str, id: &str) -> Result<UploadRow> {
        let row = sqlx::query("SELECT size, parts, hash_state, multipart FROM uploads WHERE id = $1 AND repo = $2")
            .bind(id)
            .bind(repo)
            .fetch_optional(&self.write)
            .await
            .map_err(Error::db("reading an upload session"))?
            .ok_or_else(|| Error::UploadUnknown {
                repo: repo.to_owned(),
                id: id.to_owned(),
            })?;
        let parts: String = row.try_get(1).map_err(Error::db("reading an upload session"))?;
        Ok(UploadRow {
            id: id.to_owned(),
            repo: repo.to_owned(),
            size: to_u64(
                row.try_get(0).map_err(Error::db("reading an upload session"))?,
                "upload size",
            )?,
            parts: serde_json::from_str(&parts).map_err(|e| Error::Corrupt(format!("parts of upload {id}: {e}")))?,
            hash_state: row.try_get(2).map_err(Error::db("reading an upload session"))?,
            multipart: multipart_from(id, row.try_get(3).map_err(Error::db("reading an upload session"))?)?,
        })
    }

    /// Records a new part, only if the session still has `old_size` bytes (compare-and-swap:
    /// of two concurrent chunks at one offset, exactly one wins). Returns whether it did.
    pub async fn advance_upload(&self, id: &str, old_size: u64, new: &UploadRow) -> Result<bool> {
        let parts = serde_json::to_string(&new.parts).map_err(|e| Error::Corrupt(e.to_string()))?;
        let r = sqlx::query(
            "UPDATE uploads SET size = $1, parts = $2, hash_state = $3, updated_at = $4, multipart = $7 \
             WHERE id = $5 AND size = $6",
        )
        .bind(new.size as i64)
        .bind(parts)
        .bind(new.hash_state.as_deref())
        .bind(now())
        .bind(id)
        .bind(old_size as i64)
        .bind(multipart_json(&new.multipart)?)
        .execute(&self.write)
        .await
        .map_err(Error::db("recording an upload chunk"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Closes a session. Returns whether it existed.
    pub async fn delete_upload(&self, id: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM uploads WHERE id = $1")
            .bind(id)
            .execute(&self.write)
            .await
            .map_err(Error::db("closing an upload session"))?;
        Ok(r.rows_affected() > 0)
    }
}

/// An account as stored: a person (`user`) or a robot (`robot`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Login name.
    pub name: String,
    /// `user` or `robot`.
    pub kind: String,
    /// bcrypt hash of the password or robot secret.
    pub password_hash: String,
    /// Robots: JSON of what they may do; opaque here, interpreted by the registry's auth.
    pub scopes: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
}

impl Meta {
    /// Creates an account; [`Error::AlreadyExists`] if the name is taken.
    pub async fn create_account(&self, a: &Account) -> Result<()> {
        let r = sqlx::query(
            "INSERT INTO users (name, kind, password_hash, scopes, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&a.name)
        .bind(&a.kind)
        .bind(&a.password_hash)
        .bind(a.scopes.as_deref())
        .bind(now())
        .execute(&self.write)
        .await
        .map_err(Error::db("creating an account"))?;
        if r.rows_affected() == 0 {
            return Err(Error::AlreadyExists {
                what: format!("account {}", a.name),
            });
        }
        Ok(())
    }

    /// Replaces an account's password hash. Returns whether the account exists.
    pub async fn set_password(&self, name: &str, password_hash: &str) -> Result<bool> {
        let r = sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE name = $3")
            .bind(password_hash)
            .bind(now())
            .bind(name)
            .execute(&self.write)
            .await
            .map_err(Error::db("changing a password"))?;
        Ok(r.rows_affected() > 0)
    }

    /// Deletes an account (revokes a robot). Returns whether it existed.
    pub async fn delete_account(&self, name: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM users WHERE name = $1")
            .bind(name)
            .execute(&self.write)
            .await
            .map_err(Error::db("deleting an account"))?;
        Ok(r.rows_affected() > 0)
    }

    /// One account by name.
    pub async fn account(&self, name: &str) -> Result<Option<Account>> {
        let row = sqlx::query("SELECT name, kind, password_hash, scopes, created_at FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.read)
            .await
            .map_err(Error::db("reading an account"))?;
        row.map(|r| account_from_row(&r)).transpose()
    }

    /// Every account, by name.
    pub async fn accounts(&self) -> Result<Vec<Account>> {
        let rows = sqlx::query("SELECT name, kind, password_hash, scopes, created_at FROM users ORDER BY name")
            .fetch_all(&self.read)
            .await
            .map_err(Error::db("listing accounts"))?;
        rows.iter().map(account_from_row).collect()
    }
}

fn account_from_row(r: &AnyRow) -> Result<Account> {
    let e = || Error::db("reading an account");
    Ok(Account {
        name: r.try_get(0).map_err(e())?,
        kind: r.try_get(1).map_err(e())?,
        password_hash: r.try_get(2).map_err(e())?,
        scopes: r.try_get(3).map_err(e())?,
        created_at: r.try_get(4).map_err(e())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_oci::manifest;

    #[tokio::test]
    async fn manifests_tags_and_referrers() {
        for (_, meta) in crate::testing::metas().await {
            manifests_tags_and_referrers_on(meta).await;
        }
    }

    async fn manifests_tags_and_referrers_on(meta: Meta) {
        let cfg = Digest::of(b"{}");
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cfg}","size":2}},"layers":[]}}"#
        );
        let parsed = manifest::parse(body.as_bytes(), None).expect("parse");
        let d = Digest::of(body.as_bytes());
        let err = meta.put_manifest("a/b", &d, &parsed, body.as_bytes(), Some("v1")).await;
        assert!(matches!(err, Err(Error::ManifestBlobUnknown { .. })), "{err:?}");
        meta.link_blob("a/b", &cfg, 2).await.expect("link");
        meta.put_manifest("a/b", &d, &parsed, body.as_bytes(), Some("v1"))
            .await
            .expect("put");
        let m = meta.get_manifest("a/b", Reference::Tag("v1"), true).await.expect("get");
        assert_eq!(m.content.as_deref(), Some(body.as_bytes()));
        assert_eq!(m.size, body.len() as u64);
        assert_eq!(meta.tags("a/b", 10, None).await.expect("tags"), vec!["v1"]);
        assert!(matches!(
            meta.tags("nope", 10, None).await,
            Err(Error::NameUnknown { .. })
        ));

        let art = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/x-sig","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{cfg}","size":2}},"layers":[],"subject":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d}","size":{}}}}}"#,
            body.len()
        );
        let ap = manifest::parse(art.as_bytes(), None).expect("parse");
        meta.put_manifest("a/b", &Digest::of(art.as_bytes()), &ap, art.as_bytes(), None)
            .await
            .expect("put");
        assert_eq!(meta.referrers("a/b", &d, None).await.expect("refs").len(), 1);
        assert_eq!(
            meta.referrers("a/b", &d, Some("application/x-sig"))
                .await
                .expect("refs")
                .len(),
            1
        );
        assert_eq!(meta.referrers("a/b", &d, Some("other")).await.expect("refs").len(), 0);

        meta.delete_manifest("a/b", &d).await.expect("delete");
        assert!(meta.tags("a/b", 10, None).await.expect("tags").is_empty());
        assert!(matches!(
            meta.delete_manifest("a/b", &d).await,
            Err(Error::ManifestUnknown { .. })
        ));
    }

    #[tokio::test]
    async fn accounts() {
        for (_, meta) in crate::testing::metas().await {
            accounts_on(meta).await;
        }
    }

    async fn accounts_on(meta: Meta) {
        let a = Account {
            name: "alice".into(),
            kind: "user".into(),
            password_hash: "h1".into(),
            scopes: None,
            created_at: 0,
        };
        meta.create_account(&a).await.expect("create");
        assert!(matches!(
            meta.create_account(&a).await,
            Err(Error::AlreadyExists { .. })
        ));
        assert!(meta.set_password("alice", "h2").await.expect("passwd"));
        assert!(!meta.set_password("bob", "h2").await.expect("passwd"));
        let got = meta.account("alice").await.expect("get").expect("exists");
        assert_eq!((got.kind.as_str(), got.password_hash.as_str()), ("user", "h2"));
        assert_eq!(meta.accounts().await.expect("list").len(), 1);
        assert!(meta.delete_account("alice").await.expect("rm"));
        assert!(meta.account("alice").await.expect("get").is_none());
    }
}
