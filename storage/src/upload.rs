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

use crate::blob::BlobStore;
use crate::error::{Error, Result};
use crate::hashstate;
use crate::meta::{Meta, Part, UploadRow};
use crate::paths;
use berth_oci::Digest;
use bytes::Bytes;
use object_store::path::Path;
use sha2::{Digest as _, Sha256};

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
}

impl Uploads {
    /// Sessions stored in `blobs` (bytes) and `meta` (state).
    pub fn new(blobs: BlobStore, meta: Meta) -> Self {
        Uploads { blobs, meta }
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

    /// The hasher for everything received so far: from the saved state, or by re-reading the
    /// parts when the state is missing or of an unknown format.
    async fn hasher(&self, row: &UploadRow) -> Result<Sha256> {
        if row.parts.is_empty() {
            return Ok(Sha256::new());
        }
        if let Some(h) = row.hash_state.as_deref().and_then(hashstate::restore) {
            return Ok(h);
        }
        tracing::warn!(upload = %row.id, "saved hash state unusable; re-hashing staged parts");
        self.blobs.rehash(&part_keys(row)).await
    }

    async fn append_row<S, E>(&self, row: UploadRow, check: ChunkCheck, body: S) -> Result<(UploadRow, Sha256)>
    where
        S: futures::Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        if let Some(start) = check.start {
            if start != row.size {
                return Err(Error::OutOfOrder {
                    offset: row.size,
                    start,
                });
            }
        }
        let mut hasher = self.hasher(&row).await?;
        let key = paths::upload_part(&row.id, row.parts.len());
        let written = self.blobs.write_part(&key, body, &mut hasher).await.inspect_err(|_| {
            // write_part removed what it staged; the session is unchanged.
        })?;
        if let Some(declared) = check.len {
            if declared != written {
                self.blobs.delete_parts(std::slice::from_ref(&key)).await;
                return Err(Error::SizeMismatch {
                    declared,
                    received: written,
                });
            }
        }
        if written == 0 {
            self.blobs.delete_parts(std::slice::from_ref(&key)).await;
            return Ok((row, hasher));
        }
        let old_size = row.size;
        let mut new = row;
        new.size += written;
        new.parts.push(Part {
            key: key.to_string(),
            size: written,
        });
        new.hash_state = Some(hashstate::save(&hasher));
        if !self.meta.advance_upload(&new.id, old_size, &new).await? {
            // Another chunk landed first at this offset.
            self.blobs.delete_parts(std::slice::from_ref(&key)).await;
            let current = self.meta.get_upload(&new.repo, &new.id).await?;
            return Err(Error::OutOfOrder {
                offset: current.size,
                start: old_size,
            });
        }
        Ok((new, hasher))
    }

    /// Appends one chunk to the session.
    pub async fn append<S, E>(&self, repo: &str, id: &str, check: ChunkCheck, body: S) -> Result<Upload>
    where
        S: futures::Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let row = self.meta.get_upload(repo, id).await?;
        let (row, _) = self.append_row(row, check, body).await?;
        Ok(Upload {
            id: row.id,
            size: row.size,
        })
    }

    /// Appends the final chunk (if any), verifies `digest` and commits the blob into `repo`.
    /// Returns the blob's size. On a digest mismatch the session stays open and unchanged
    /// apart from the final chunk, so nothing already sent is lost.
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
        let row = self.meta.get_upload(repo, id).await?;
        let (row, hasher) = match body {
            Some(body) => self.append_row(row, check, body).await?,
            None => {
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
        let parts: Vec<(Path, u64)> = row.parts.iter().map(|p| (Path::from(p.key.as_str()), p.size)).collect();
        self.blobs.check_parts(&parts).await?;
        // The session holds the blob against the collector from here until it is linked
        // (see Meta::reserve_upload): only then may its bytes be trusted or moved in place.
        if !self.meta.reserve_upload(id, row.size, digest).await? {
            let current = self.meta.get_upload(repo, id).await?;
            return Err(Error::OutOfOrder {
                offset: current.size,
                start: row.size,
            });
        }
        self.blobs.commit(&part_keys(&row), digest, row.size).await?;
        self.meta.link_upload(id, repo, digest, row.size).await?;
        self.blobs.remove_upload_dir(id).await;
        Ok(row.size)
    }

    /// Drops the session and its staged bytes.
    pub async fn cancel(&self, repo: &str, id: &str) -> Result<()> {
        let row = self.meta.get_upload(repo, id).await?;
        self.meta.delete_upload(id).await?;
        self.blobs.delete_parts(&part_keys(&row)).await;
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
    use object_store::memory::InMemory;
    use std::sync::Arc;

    type Chunks = stream::Iter<std::vec::IntoIter<std::result::Result<Bytes, String>>>;

    fn body(b: &'static [u8]) -> Chunks {
        stream::iter(vec![Ok(Bytes::from_static(b))])
    }

    /// One setup per metadata backend (SQLite, and PostgreSQL when configured).
    async fn setups() -> Vec<(Uploads, Meta, BlobStore)> {
        let mut out = Vec::new();
        for (_, meta) in crate::testing::metas().await {
            let blobs = BlobStore::new(Arc::new(InMemory::new()));
            out.push((Uploads::new(blobs.clone(), meta.clone()), meta, blobs));
        }
        out
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
