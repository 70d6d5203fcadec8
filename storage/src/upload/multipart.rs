//! The upload engine for object stores with a multipart API (S3, GCS, Azure, memory).
//!
//! A session's bytes become parts of one multipart upload to `uploads/<id>/data`, whose id and
//! parts (with the backend's ETags) are kept in the session's row, so any replica can continue
//! or finish it. Bytes are cut into parts of the store's part size; fewer than the backend's
//! minimum part size (5 MiB on S3) wait in small staged objects until later chunks make a part
//! of them, so the spec's tiny chunks work. The multipart upload is created with the first
//! part: a blob smaller than a part never makes one, and is written in one PUT. Finishing
//! completes the upload and copies it to the digest's key.
//!
//! Durability is the store's: S3, GCS and Azure acknowledge a part, a PUT, a completion or a
//! copy only once the object is stored redundantly, and a completed multipart upload or copy
//! appears whole or not at all. Nothing here syncs. Memory: a session holds up to one part
//! (8 MiB) while a chunk is received, since a part must be sent whole.

use super::{part_keys, ChunkCheck, Uploads};
use crate::error::{Error, Result};
use crate::hash::HashThread;
use crate::hashstate;
use crate::meta::{Multipart, MultipartPart, Part, UploadRow};
use crate::paths;
use berth_oci::Digest;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use object_store::path::Path;
use sha2::Sha256;

impl Uploads {
    /// Multipart counterpart of `append_row`: cuts the received bytes (after any still staged)
    /// into parts; keeps fewer than a minimum part in a staged object.
    pub(super) async fn append_multipart<S, E>(
        &self,
        row: UploadRow,
        check: ChunkCheck,
        body: S,
    ) -> Result<(UploadRow, Sha256)>
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
            let held = hashing.take(&self.budget, chunk.len()).await?;
            hashing.feed(chunk, held).await?;
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
            let key = paths::upload_data(session);
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
    pub(super) async fn commit_multipart(&self, row: &UploadRow, digest: &Digest) -> Result<()> {
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
