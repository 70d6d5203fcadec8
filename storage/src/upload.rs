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

use crate::blob::{BlobStore, HASH_BATCH, HASH_QUEUE};
use crate::error::{Error, Result};
use crate::hashstate;
use crate::meta::{Meta, Multipart, MultipartPart, Part, UploadRow};
use crate::paths;
use berth_oci::Digest;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
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
                key: paths::upload_multipart(&row.id).to_string(),
                expected: row.size,
                actual: 0,
            });
        }
        tracing::warn!(upload = %row.id, "saved hash state unusable; re-hashing staged parts");
        self.blobs.rehash(&part_keys(row)).await
    }

    async fn append_row<S, E>(&self, row: UploadRow, check: ChunkCheck, body: S) -> Result<(UploadRow, Sha256)>
    where
        S: futures::Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        if self.blobs.multipart_enabled() {
            return self.append_multipart(row, check, body).await;
        }
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
        if self.blobs.multipart_enabled() {
            self.reserve(repo, &row, digest).await?;
            self.commit_multipart(&row, digest).await?;
            self.meta.link_upload(id, repo, digest, row.size).await?;
            return Ok(row.size);
        }
        self.reserve(repo, &row, digest).await?;
        self.blobs.commit(&part_keys(&row), digest, row.size).await?;
        self.meta.link_upload(id, repo, digest, row.size).await?;
        self.blobs.remove_upload_dir(id).await;
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

    /// Multipart counterpart of `append_row`: cuts the received bytes (after any still staged)
    /// into parts; keeps fewer than a minimum part in a staged object.
    async fn append_multipart<S, E>(&self, row: UploadRow, check: ChunkCheck, body: S) -> Result<(UploadRow, Sha256)>
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
        let hasher = self.hasher(&row).await?;
        let mut rx = Receiving {
            multipart: row.multipart.clone(),
            created: false,
            new_parts: Vec::new(),
            buf: BytesMut::new(),
            merged: false,
            received: 0,
        };
        let mut hashing = HashThread::start(hasher);
        let outcome = self.receive_multipart(&row, body, &mut rx, &mut hashing).await;
        let hasher = hashing.finish().await;
        let outcome = outcome.and_then(|()| {
            let hasher = hasher?;
            match check.len {
                Some(declared) if declared != rx.received => Err(Error::SizeMismatch {
                    declared,
                    received: rx.received,
                }),
                _ => Ok(hasher),
            }
        });
        let hasher = match outcome {
            Ok(h) => h,
            Err(e) => {
                self.abandon(&rx, None).await;
                return Err(e);
            }
        };
        if rx.received == 0 {
            self.abandon(&rx, None).await;
            return Ok((row, hasher));
        }
        let (min_part, _) = self.blobs.part_sizes();
        // What is left: a part if big enough (possible only once staged bytes were merged in),
        // else a new staged object.
        let mut staged = if rx.merged { Vec::new() } else { row.parts.clone() };
        let mut new_staged = None;
        if !rx.buf.is_empty() {
            let rest = std::mem::take(&mut rx.buf).freeze();
            if rx.merged && rest.len() >= min_part {
                if let Err(e) = self.upload_part(&row.id, &mut rx, rest).await {
                    self.abandon(&rx, None).await;
                    return Err(e);
                }
            } else {
                let key = paths::upload_part(&row.id, row.parts.len());
                let size = rest.len() as u64;
                if let Err(e) = self.blobs.put_staged(&key, rest).await {
                    self.abandon(&rx, None).await;
                    return Err(e);
                }
                staged.push(Part {
                    key: key.to_string(),
                    size,
                });
                new_staged = Some(key);
            }
        }
        let mut multipart = rx.multipart.clone();
        if let Some(m) = &mut multipart {
            m.parts.extend(rx.new_parts.iter().cloned());
        }
        let new = UploadRow {
            id: row.id.clone(),
            repo: row.repo.clone(),
            size: row.size + rx.received,
            parts: staged,
            hash_state: Some(hashstate::save(&hasher)),
            multipart,
        };
        if !self.meta.advance_upload(&row.id, row.size, &new).await? {
            self.abandon(&rx, new_staged.as_ref()).await;
            let current = self.meta.get_upload(&row.repo, &row.id).await?;
            return Err(Error::OutOfOrder {
                offset: current.size,
                start: row.size,
            });
        }
        if rx.merged {
            // Their bytes are in parts now.
            self.blobs.delete_parts(&part_keys(&row)).await;
        }
        Ok((new, hasher))
    }

    async fn receive_multipart<S, E>(
        &self,
        row: &UploadRow,
        mut body: S,
        rx: &mut Receiving,
        hashing: &mut HashThread,
    ) -> Result<()>
    where
        S: futures::Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let (min_part, part_size) = self.blobs.part_sizes();
        let staged: u64 = row.parts.iter().map(|p| p.size).sum();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Error::Body {
                received: rx.received,
                message: e.to_string(),
            })?;
            rx.received += chunk.len() as u64;
            rx.buf.extend_from_slice(&chunk);
            hashing.feed(chunk).await?;
            if !rx.merged && staged + rx.buf.len() as u64 >= min_part as u64 {
                // Enough for a part: the staged bytes go first.
                let mut all = BytesMut::from(&self.blobs.read_staged(&part_keys(row)).await?[..]);
                all.extend_from_slice(&rx.buf);
                rx.buf = all;
                rx.merged = true;
            }
            while rx.merged && rx.buf.len() >= part_size {
                let part = rx.buf.split_to(part_size).freeze();
                self.upload_part(&row.id, rx, part).await?;
            }
        }
        Ok(())
    }

    /// Uploads the next part, creating the multipart upload with the first one.
    async fn upload_part(&self, session: &str, rx: &mut Receiving, data: Bytes) -> Result<()> {
        if rx.multipart.is_none() {
            let key = paths::upload_multipart(session);
            let id = self.blobs.mp_create(&key).await?;
            rx.multipart = Some(Multipart {
                key: key.to_string(),
                id,
                parts: Vec::new(),
            });
            rx.created = true;
        }
        let Some(m) = &rx.multipart else {
            return Err(Error::Corrupt("multipart upload vanished".into()));
        };
        let size = data.len() as u64;
        let idx = m.parts.len() + rx.new_parts.len();
        let content_id = self
            .blobs
            .mp_put_part(&Path::from(m.key.as_str()), &m.id, idx, data)
            .await?;
        rx.new_parts.push(MultipartPart { content_id, size });
        Ok(())
    }

    /// Undoes what a failed or lost chunk left: a multipart upload it created, a staged object
    /// it wrote. Parts it added to an existing upload are simply never listed at completion.
    async fn abandon(&self, rx: &Receiving, staged: Option<&Path>) {
        if rx.created {
            if let Some(m) = &rx.multipart {
                if let Err(e) = self.blobs.mp_abort(&Path::from(m.key.as_str()), &m.id).await {
                    tracing::warn!(upload = %m.key, error = %e, "could not abort a multipart upload");
                }
            }
        }
        if let Some(k) = staged {
            self.blobs.delete_parts(std::slice::from_ref(k)).await;
        }
    }

    /// Makes a verified multipart session the blob `digest`: one PUT when it never grew to a
    /// part, else completion of its multipart upload (staged bytes as the last part) and a
    /// copy to the digest's key.
    async fn commit_multipart(&self, row: &UploadRow, digest: &Digest) -> Result<()> {
        let staged = part_keys(row);
        // Best effort: an upload left behind costs storage until the bucket's lifecycle rule
        // for incomplete multipart uploads takes it, never correctness.
        let abort = |m: &Multipart| {
            let (key, id) = (Path::from(m.key.as_str()), m.id.clone());
            let blobs = self.blobs.clone();
            async move {
                if let Err(e) = blobs.mp_abort(&key, &id).await {
                    tracing::warn!(upload = %key, error = %e, "could not abort a multipart upload");
                }
            }
        };
        if self.blobs.stat(digest).await? == Some(row.size) {
            if let Some(m) = &row.multipart {
                abort(m).await;
            }
            self.blobs.delete_parts(&staged).await;
            return Ok(());
        }
        match &row.multipart {
            Some(m) if !m.parts.is_empty() => {
                let key = Path::from(m.key.as_str());
                let mut ids: Vec<String> = m.parts.iter().map(|p| p.content_id.clone()).collect();
                let last = self.blobs.read_staged(&staged).await?;
                if !last.is_empty() {
                    ids.push(self.blobs.mp_put_part(&key, &m.id, ids.len(), last).await?);
                }
                self.blobs.mp_complete(&key, &m.id, &ids).await?;
                self.blobs.commit_staged(&key, digest, row.size).await?;
            }
            other => {
                let data = self.blobs.read_staged(&staged).await?;
                self.blobs.put_blob(digest, data).await?;
                if let Some(m) = other {
                    abort(m).await;
                }
            }
        }
        self.blobs.delete_parts(&staged).await;
        Ok(())
    }
}

/// What one multipart chunk has done so far, for the row update or the clean-up.
struct Receiving {
    multipart: Option<Multipart>,
    /// Whether this chunk created `multipart`.
    created: bool,
    /// Parts this chunk uploaded.
    new_parts: Vec<MultipartPart>,
    /// Bytes not yet in a part.
    buf: BytesMut,
    /// Whether the session's staged bytes were read into `buf`.
    merged: bool,
    /// Body bytes received.
    received: u64,
}

/// SHA-256 on a blocking thread of its own, fed in batches, so hashing overlaps with receiving
/// and uploading.
struct HashThread {
    tx: Option<tokio::sync::mpsc::Sender<Vec<Bytes>>>,
    handle: tokio::task::JoinHandle<Sha256>,
    batch: Vec<Bytes>,
    batched: usize,
}

impl HashThread {
    fn start(mut h: Sha256) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Bytes>>(HASH_QUEUE);
        let handle = tokio::task::spawn_blocking(move || {
            while let Some(batch) = rx.blocking_recv() {
                for b in batch {
                    h.update(&b);
                }
            }
            h
        });
        HashThread {
            tx: Some(tx),
            handle,
            batch: Vec::new(),
            batched: 0,
        }
    }

    async fn feed(&mut self, b: Bytes) -> Result<()> {
        self.batched += b.len();
        self.batch.push(b);
        if self.batched >= HASH_BATCH {
            self.batched = 0;
            let batch = std::mem::take(&mut self.batch);
            if let Some(tx) = &self.tx {
                tx.send(batch)
                    .await
                    .map_err(|_| Error::Corrupt("hashing thread stopped".into()))?;
            }
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<Sha256> {
        if let Some(tx) = self.tx.take() {
            if !self.batch.is_empty() {
                let _ = tx.send(std::mem::take(&mut self.batch)).await;
            }
        }
        self.handle
            .await
            .map_err(|e| Error::Corrupt(format!("hashing thread failed: {e}")))
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

    /// One setup per metadata backend (SQLite, and PostgreSQL when configured), over a memory
    /// store with an object per chunk and over one through its multipart API.
    async fn setups() -> Vec<(Uploads, Meta, BlobStore)> {
        let mut out = Vec::new();
        for multipart in [false, true] {
            for (_, meta) in crate::testing::metas().await {
                let blobs = if multipart {
                    BlobStore::memory()
                } else {
                    BlobStore::new(Arc::new(InMemory::new()))
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
