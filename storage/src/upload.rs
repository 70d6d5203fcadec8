//! Upload sessions: stage each chunk as a part while hashing it, persist the hash state, then
//! verify the digest and commit.
//!
//! Lifecycle (distribution spec "pushing blobs"):
//! 1. [`Uploads::start`] opens a session (a row in `uploads`, no bytes yet).
//! 2. [`Uploads::append`] streams one chunk (a PATCH, or the body of the final PUT) into a new
//!    staged part, hashing on the way, then records part + hash state with a compare-and-swap
//!    on the session size. A chunk that fails midway leaves the session as it was.
//! 3. [`Uploads::finish`] checks the digest from the saved state (no re-read when the state is
//!    intact), records the digest on the session (from then on the session keeps the blob
//!    from the garbage collector), makes the parts the blob, then links it into the repository
//!    and closes the session in one transaction.
//! 4. [`Uploads::cancel`] drops the session and its parts.
//! 5. Sessions left without a chunk for longer than the expiry are purged by the collector
//!    ([`crate::gc`]), with their parts.
//!
//! # On object stores (multipart)
//! A store with a multipart API (S3, memory) sends a session's bytes as parts of one multipart
//! upload to `uploads/<id>/data`, whose id and parts (with the backend's ETags) are kept in
//! the session's row, so any replica can continue or finish it. Bytes are cut into parts of
//! the store's part size; fewer than the backend's minimum part size (5 MiB on S3) wait in
//! small staged objects until later chunks make a part of them, so the spec's tiny chunks
//! work. The multipart upload is created with the first part: a blob smaller than a part
//! never makes one, and is written in one PUT. Finishing completes the upload and copies it to
//! the digest's key.

use crate::blob::BlobStore;
use crate::error::{Error, Result};
use crate::hash::Budget;
use crate::hashstate;
use crate::meta::{Meta, UploadRow};
use crate::paths;
use berth_oci::Digest;
use bytes::Bytes;
use object_store::path::Path;
use sha2::{Digest as _, Sha256};

mod local;
mod multipart;

/// What a client learns about a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// Session id (goes into the Location URL).
    pub id: String,
    /// Bytes received so far.
    pub size: u64,
}

/// Constraints a chunk's request puts on it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChunkCheck {
    /// Offset the chunk claims to start at (`Content-Range`), if any.
    pub start: Option<u64>,
    /// Length the chunk claims (`Content-Range` or `Content-Length`), if any.
    pub len: Option<u64>,
}

/// Upload sessions over a blob store and the metadata repository.
#[derive(Clone)]
pub struct Uploads {
    blobs: BlobStore,
    meta: Meta,
    /// Bytes all uploads may hold in memory at once.
    budget: Budget,
}

/// Where a store's uploads stage their bytes.
enum Engine {
    /// One file per session in the store's directory ([`local`]).
    Local(std::path::PathBuf),
    /// The backend's multipart API ([`multipart`]).
    Multipart,
}

impl Uploads {
    /// Sessions stored in `blobs` (bytes) and `meta` (state), with the default memory budget.
    pub fn new(blobs: BlobStore, meta: Meta) -> Self {
        Uploads {
            blobs,
            meta,
            budget: Budget::default(),
        }
    }

    /// The same, holding at most `budget`'s bytes in memory across all uploads.
    pub fn with_budget(mut self, budget: Budget) -> Self {
        self.budget = budget;
        self
    }

    /// The memory budget uploads share.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Opens a session for `repo`.
    pub async fn start(&self, repo: &str) -> Result<Upload> {
        let id = uuid::Uuid::new_v4().to_string();
        self.meta.create_upload(&id, repo).await?;
        Ok(Upload { id, size: 0 })
    }

    /// The session's progress.
    pub async fn status(&self, repo: &str, id: &str) -> Result<Upload> {
        let row = self.meta.get_upload(repo, id).await?;
        Ok(Upload {
            id: row.id,
            size: row.size,
        })
    }

    /// The hasher for everything a multipart session received so far: from the saved state,
    /// or by re-reading the staged objects when the state is missing or of an unknown format.
    async fn hasher(&self, row: &UploadRow) -> Result<Sha256> {
        let uploaded = row.multipart.as_ref().is_some_and(|m| !m.parts.is_empty());
        if row.parts.is_empty() && !uploaded {
            return Ok(Sha256::new());
        }
        if let Some(h) = row.hash_state.as_deref().and_then(hashstate::restore) {
            return Ok(h);
        }
        if uploaded {
            // The parts of an unfinished multipart upload cannot be read back.
            return Err(Error::UploadDamaged {
                key: paths::upload_data(&row.id).to_string(),
                expected: row.size,
                actual: 0,
            });
        }
        tracing::warn!(upload = %row.id, "saved hash state unusable; re-hashing staged parts");
        self.blobs.rehash(&part_keys(row)).await
    }

    /// The engine a store's uploads run on: its local directory, or its multipart API.
    fn engine(&self) -> Result<Engine> {
        if let Some(root) = self.blobs.local_root() {
            return Ok(Engine::Local(root.to_path_buf()));
        }
        if self.blobs.multipart_enabled() {
            return Ok(Engine::Multipart);
        }
        Err(Error::Config(
            "this blob store takes no uploads: it is neither a local directory nor has a multipart API".into(),
        ))
    }

    /// Appends one chunk to the session.
    pub async fn append<S, E>(&self, repo: &str, id: &str, check: ChunkCheck, body: S) -> Result<Upload>
    where
        S: futures::Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let (row, _) = match self.engine()? {
            Engine::Local(root) => self.append_local(root, repo, id, check, body).await?,
            Engine::Multipart => {
                let row = self.meta.get_upload(repo, id).await?;
                self.append_multipart(row, check, body).await?
            }
        };
        Ok(Upload {
            id: row.id,
            size: row.size,
        })
    }

    /// Appends the final chunk (if any), verifies `digest` and commits the blob into `repo`.
    /// Returns the blob's size. On a digest mismatch the session stays open and unchanged
    /// apart from the final chunk, so nothing already sent is lost.
    ///
    /// Bytes before rows: when this returns, the blob's bytes are durable under its digest's
    /// key and the row linking it into `repo` is committed.
    pub async fn finish<S, E>(
        &self,
        repo: &str,
        id: &str,
        digest: &Digest,
        check: ChunkCheck,
        body: Option<S>,
    ) -> Result<u64>
    where
        S: futures::Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let engine = self.engine()?;
        let (row, hasher) = match (&engine, body) {
            (Engine::Local(root), Some(body)) => self.append_local(root.clone(), repo, id, check, body).await?,
            (Engine::Local(root), None) => {
                let row = self.meta.get_upload(repo, id).await?;
                let h = self.hasher_local(root.clone(), &row).await?;
                (row, h)
            }
            (Engine::Multipart, Some(body)) => {
                let row = self.meta.get_upload(repo, id).await?;
                self.append_multipart(row, check, body).await?
            }
            (Engine::Multipart, None) => {
                let row = self.meta.get_upload(repo, id).await?;
                let h = self.hasher(&row).await?;
                (row, h)
            }
        };
        let actual = Digest::from_sha256(&hasher.finalize());
        if &actual != digest {
            return Err(Error::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        self.reserve(repo, &row, digest).await?;
        match engine {
            Engine::Local(root) => {
                self.commit_local(root, &row, digest).await?;
                self.meta.link_upload(id, repo, digest, row.size).await?;
                // The session's staging name goes once the session is closed; the collector
                // sweeps what a crash leaves.
                let (blobs, id) = (self.blobs.clone(), id.to_owned());
                tokio::spawn(async move {
                    if let Err(e) = blobs.delete_upload_dir(&id).await {
                        tracing::warn!(upload = %id, error = %e, "could not remove a finished upload's staging");
                    }
                });
            }
            Engine::Multipart => {
                let parts: Vec<(Path, u64)> = row.parts.iter().map(|p| (Path::from(p.key.as_str()), p.size)).collect();
                self.blobs.check_parts(&parts).await?;
                self.commit_multipart(&row, digest).await?;
                self.meta.link_upload(id, repo, digest, row.size).await?;
            }
        }
        Ok(row.size)
    }

    /// Drops the session and its staged bytes.
    pub async fn cancel(&self, repo: &str, id: &str) -> Result<()> {
        let row = self.meta.get_upload(repo, id).await?;
        self.meta.delete_upload(id).await?;
        if let Some(m) = &row.multipart {
            self.blobs.mp_abort(&Path::from(m.key.as_str()), &m.id).await?;
        }
        self.blobs.delete_parts(&part_keys(&row)).await;
        Ok(())
    }

    /// The session holds the blob against the collector from here until it is linked (see
    /// `Meta::reserve_upload`): only then may its bytes be trusted or moved in place.
    async fn reserve(&self, repo: &str, row: &UploadRow, digest: &Digest) -> Result<()> {
        if !self.meta.reserve_upload(&row.id, row.size, digest).await? {
            let current = self.meta.get_upload(repo, &row.id).await?;
            return Err(Error::OutOfOrder {
                offset: current.size,
                start: row.size,
            });
        }
        Ok(())
    }
}

fn part_keys(row: &UploadRow) -> Vec<Path> {
    row.parts.iter().map(|p| Path::from(p.key.as_str())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;

    type Chunks = stream::Iter<std::vec::IntoIter<std::result::Result<Bytes, String>>>;

    fn body(b: &'static [u8]) -> Chunks {
        stream::iter(vec![Ok(Bytes::from_static(b))])
    }

    /// One setup per metadata backend (SQLite, and PostgreSQL when configured), over a local
    /// directory and over a memory store through its multipart API.
    async fn setups() -> Vec<(Uploads, Meta, BlobStore)> {
        let mut out = Vec::new();
        for multipart in [false, true] {
            for (_, meta) in crate::testing::metas().await {
                let blobs = if multipart {
                    BlobStore::memory()
                } else {
                    // Kept for the test process's life: the store outlives this function.
                    let dir = tempfile::tempdir().expect("tempdir").keep();
                    BlobStore::local(&dir).expect("local store")
                };
                out.push((Uploads::new(blobs.clone(), meta.clone()), meta, blobs));
            }
        }
        out
    }

    /// Multipart stores with the chunk sizes to send them, in units that make the same
    /// sequence of staged objects, merges and parts: memory with parts of 5 and 8 bytes, and
    /// S3 (moto) with its own 5 MiB minimum and 8 MiB parts.
    async fn multipart_setups() -> Vec<(String, Uploads, BlobStore, usize)> {
        let mut out = Vec::new();
        for (db, meta) in crate::testing::metas().await {
            let blobs = BlobStore::memory().with_part_sizes(5, 8);
            out.push((format!("{db}+memory"), Uploads::new(blobs.clone(), meta), blobs, 1));
        }
        if let Some((url, opts)) = crate::testing::fresh_s3() {
            let (db, meta) = crate::testing::metas().await.pop().expect("a database");
            let blobs = BlobStore::open(&url, &opts).expect("s3 store");
            out.push((
                format!("{db}+s3"),
                Uploads::new(blobs.clone(), meta),
                blobs,
                1024 * 1024,
            ));
        }
        out
    }

    async fn staged_objects(blobs: &BlobStore) -> Vec<String> {
        use futures::TryStreamExt;
        blobs
            .store
            .list(Some(&paths::uploads_root()))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .expect("list")
    }

    async fn read_blob(blobs: &BlobStore, d: &Digest) -> Vec<u8> {
        use futures::TryStreamExt;
        let r = blobs.get(d, None).await.expect("get");
        let parts: Vec<Bytes> = r.stream.try_collect().await.expect("read");
        parts.concat()
    }

    #[tokio::test]
    async fn multipart_chunks_of_any_size() {
        for (name, up, blobs, unit) in multipart_setups().await {
            // Sizes in units: 5 is the minimum part, 8 the part size.
            let sizes = [2 * unit, 1, 9 * unit, 3 * unit, 1, 17 * unit + 3];
            let total: usize = sizes.iter().sum();
            let data: Vec<u8> = (0..total).map(|i| (i * 31 % 251) as u8).collect();
            let d = Digest::of(&data);
            let u = up.start("mp").await.expect("start");
            let mut at = 0;
            for (i, n) in sizes.iter().enumerate() {
                let chunk = Bytes::copy_from_slice(&data[at..at + n]);
                let check = ChunkCheck {
                    start: Some(at as u64),
                    len: Some(*n as u64),
                };
                let body = stream::iter(vec![Ok::<_, String>(chunk)]);
                if i + 1 == sizes.len() {
                    let size = up.finish("mp", &u.id, &d, check, Some(body)).await.expect("finish");
                    assert_eq!(size, total as u64, "{name}");
                } else {
                    let got = up.append("mp", &u.id, check, body).await.expect("append");
                    assert_eq!(got.size, (at + n) as u64, "{name}");
                }
                at += n;
            }
            assert!(read_blob(&blobs, &d).await == data, "{name}: blob differs");
            assert_eq!(staged_objects(&blobs).await, Vec::<String>::new(), "{name}");

            // The same content again (the bytes exist), and a blob smaller than a part.
            for content in [data.clone(), b"tiny".to_vec()] {
                let d = Digest::of(&content);
                let u = up.start("mp").await.expect("start");
                let body = stream::iter(vec![Ok::<_, String>(Bytes::from(content.clone()))]);
                up.finish("mp", &u.id, &d, ChunkCheck::default(), Some(body))
                    .await
                    .expect("finish");
                assert!(read_blob(&blobs, &d).await == content, "{name}");
            }
            assert_eq!(staged_objects(&blobs).await, Vec::<String>::new(), "{name}");

            // A cancelled session with parts leaves nothing either.
            let u = up.start("mp").await.expect("start");
            let body = stream::iter(vec![Ok::<_, String>(Bytes::from(data[..11 * unit].to_vec()))]);
            up.append("mp", &u.id, ChunkCheck::default(), body)
                .await
                .expect("append");
            up.cancel("mp", &u.id).await.expect("cancel");
            assert_eq!(staged_objects(&blobs).await, Vec::<String>::new(), "{name}");

            // A chunk whose length disagrees changes nothing.
            let u = up.start("mp").await.expect("start");
            let body = stream::iter(vec![Ok::<_, String>(Bytes::from(data[..9 * unit].to_vec()))]);
            let err = up
                .append(
                    "mp",
                    &u.id,
                    ChunkCheck {
                        start: None,
                        len: Some(1),
                    },
                    body,
                )
                .await;
            assert!(matches!(err, Err(Error::SizeMismatch { .. })), "{name}: {err:?}");
            assert_eq!(up.status("mp", &u.id).await.expect("status").size, 0, "{name}");
            assert_eq!(staged_objects(&blobs).await, Vec::<String>::new(), "{name}");
        }
    }

    #[tokio::test]
    async fn chunked_upload_survives_lost_hash_state() {
        for (up, meta, blobs) in setups().await {
            chunked_upload_survives_lost_hash_state_on(up, meta, blobs).await;
        }
    }

    async fn chunked_upload_survives_lost_hash_state_on(up: Uploads, meta: Meta, blobs: BlobStore) {
        let u = up.start("r").await.expect("start");
        up.append(
            "r",
            &u.id,
            ChunkCheck {
                start: Some(0),
                len: Some(3),
            },
            body(b"abc"),
        )
        .await
        .expect("c1");
        let err = up
            .append(
                "r",
                &u.id,
                ChunkCheck {
                    start: Some(0),
                    len: None,
                },
                body(b"abc"),
            )
            .await;
        assert!(matches!(err, Err(Error::OutOfOrder { offset: 3, start: 0 })), "{err:?}");
        // Simulate a state written by an unknown future format: the fallback re-hashes.
        let mut row = meta.get_upload("r", &u.id).await.expect("row");
        row.hash_state = Some(vec![99]);
        assert!(meta.advance_upload(&u.id, 3, &row).await.expect("cas"));
        up.append("r", &u.id, ChunkCheck::default(), body(b"def"))
            .await
            .expect("c2");
        let wrong = Digest::of(b"abcdeX");
        assert!(matches!(
            up.finish("r", &u.id, &wrong, ChunkCheck::default(), None::<Chunks>)
                .await,
            Err(Error::DigestMismatch { .. })
        ));
        let d = Digest::of(b"abcdef");
        assert_eq!(
            up.finish("r", &u.id, &d, ChunkCheck::default(), None::<Chunks>)
                .await
                .expect("finish"),
            6
        );
        assert_eq!(meta.linked_blob("r", &d).await.expect("link"), Some(6));
        assert_eq!(blobs.stat(&d).await.expect("stat"), Some(6));
        assert!(matches!(up.status("r", &u.id).await, Err(Error::UploadUnknown { .. })));
    }

    #[tokio::test]
    async fn sessions_are_per_repository_and_cancel_cleans_up() {
        for (up, _, _) in setups().await {
            sessions_are_per_repository_and_cancel_cleans_up_on(up).await;
        }
    }

    async fn sessions_are_per_repository_and_cancel_cleans_up_on(up: Uploads) {
        let u = up.start("r").await.expect("start");
        assert!(matches!(
            up.status("other", &u.id).await,
            Err(Error::UploadUnknown { .. })
        ));
        let err = up
            .append(
                "r",
                &u.id,
                ChunkCheck {
                    start: None,
                    len: Some(5),
                },
                body(b"abc"),
            )
            .await;
        assert!(
            matches!(
                err,
                Err(Error::SizeMismatch {
                    declared: 5,
                    received: 3
                })
            ),
            "{err:?}"
        );
        assert_eq!(up.status("r", &u.id).await.expect("status").size, 0);
        up.cancel("r", &u.id).await.expect("cancel");
        assert!(matches!(up.cancel("r", &u.id).await, Err(Error::UploadUnknown { .. })));
    }
}
