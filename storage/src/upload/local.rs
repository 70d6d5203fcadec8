//! The upload engine for a local file system.
//!
//! A session's bytes go to one staging file, `uploads/<id>/data`, each chunk written with
//! positional writes at the session's offset, so finishing a chunked upload is a rename, never
//! a concatenation copy. Durability (see [`crate::durable`]): a chunk's bytes are synced before
//! the row that records them (and so before its 202); the staging file's name is synced when it
//! is created; a finished blob is renamed to its digest's key and that directory synced before
//! the row that links it (and so before the 201).
//!
//! One chunk at a time: the staging file is locked (`flock`, exclusive) from before the session
//! row is read until after the row is advanced, so two requests racing on one session never
//! interleave their bytes; the loser waits, then finds the session moved on and answers with
//! the offset it has. Bytes a failed or crashed chunk left past the recorded size are cut off
//! by the next chunk or the commit, so the file always holds exactly the recorded bytes.

use super::{ChunkCheck, Uploads};
use crate::durable;
use crate::error::{Error, Result};
use crate::hash::{self, Batch, Feeder, HashThread, HASH_QUEUE};
use crate::hashstate;
use crate::meta::{Part, UploadRow};
use crate::paths;
use berth_oci::Digest;
use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest as _, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

/// A session's staging file, locked for as long as this lives.
struct Staging {
    file: File,
    path: PathBuf,
}

/// Opens (creating it durably if missing) and locks the staging file of session `id`.
fn open_locked(root: &Path, id: &str) -> io::Result<Staging> {
    let key = paths::upload_data(id);
    let path = root.join(key.as_ref());
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("staging file has no directory"))?
        .to_path_buf();
    durable::create_dirs(root, &dir)?;
    let (file, created) = match OpenOptions::new().read(true).write(true).create_new(true).open(&path) {
        Ok(f) => (f, true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            (OpenOptions::new().read(true).write(true).open(&path)?, false)
        }
        Err(e) => return Err(e),
    };
    file.lock()?;
    if created {
        durable::sync_dir(&dir)?;
    }
    Ok(Staging { file, path })
}

/// Brings the staging file to exactly the session's recorded bytes: sessions staged by an
/// older Berth as one file per chunk are first copied into it, in order; bytes past the
/// recorded size (a chunk that failed or was lost to a crash) are cut off; fewer bytes than
/// recorded means the staged data was damaged.
fn prepare(root: &Path, st: &mut Staging, row: &UploadRow) -> Result<()> {
    let data_key = paths::upload_data(&row.id).to_string();
    let io_err = |e: io::Error| local_error(&st.path, e);
    let legacy: Vec<&Part> = row.parts.iter().filter(|p| p.key != data_key).collect();
    if !legacy.is_empty() {
        st.file.set_len(0).map_err(io_err)?;
        let mut at = 0u64;
        for p in legacy {
            let path = root.join(&p.key);
            let mut f = File::open(&path).map_err(|e| local_error(&path, e))?;
            let mut buf = vec![0u8; 1024 * 1024];
            loop {
                let n = f.read(&mut buf).map_err(|e| local_error(&path, e))?;
                if n == 0 {
                    break;
                }
                st.file.write_all_at(&buf[..n], at).map_err(io_err)?;
                at += n as u64;
            }
        }
        st.file.sync_data().map_err(io_err)?;
    }
    let len = st.file.metadata().map_err(io_err)?.len();
    if len < row.size {
        return Err(Error::UploadDamaged {
            key: data_key,
            expected: row.size,
            actual: len,
        });
    }
    if len > row.size {
        st.file.set_len(row.size).map_err(io_err)?;
        st.file.sync_data().map_err(io_err)?;
    }
    Ok(())
}

/// Hashes the first `size` bytes of the staging file: the fallback when the saved hash state
/// cannot be used.
fn rehash(st: &mut Staging, size: u64) -> io::Result<Sha256> {
    let mut h = Sha256::new();
    st.file.seek(SeekFrom::Start(0))?;
    let mut r = (&st.file).take(size);
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(h);
        }
        h.update(&buf[..n]);
    }
}

fn local_error(path: &Path, e: io::Error) -> Error {
    Error::Backend {
        key: path.display().to_string(),
        source: object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(e),
        },
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Corrupt(format!("storage thread failed: {e}")))?
}

impl Uploads {
    /// Appends one chunk to session `id` of `repo` on a local store. Returns the session as
    /// recorded after the chunk, and the hasher over all its bytes.
    pub(super) async fn append_local<S, E>(
        &self,
        root: PathBuf,
        repo: &str,
        id: &str,
        check: ChunkCheck,
        mut body: S,
    ) -> Result<(UploadRow, Sha256)>
    where
        S: futures::Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let (r, i) = (root.clone(), id.to_owned());
        let mut st = blocking(move || open_locked(&r, &i).map_err(|e| local_error(&r, e))).await?;
        // Read under the lock: the session as the last chunk left it.
        let row = self.meta.get_upload(repo, id).await?;
        if let Some(start) = check.start {
            if start != row.size {
                return Err(Error::OutOfOrder {
                    offset: row.size,
                    start,
                });
            }
        }
        let saved = row.hash_state.as_deref().and_then(hashstate::restore);
        let (st_back, row, hasher) = {
            let r = root.clone();
            blocking(move || {
                prepare(&r, &mut st, &row)?;
                let h = match saved {
                    Some(h) => h,
                    None if row.size == 0 => Sha256::new(),
                    None => {
                        tracing::warn!(upload = %row.id, "saved hash state unusable; re-hashing the staged file");
                        rehash(&mut st, row.size).map_err(|e| local_error(&st.path, e))?
                    }
                };
                Ok((st, row, h))
            })
            .await?
        };
        let start = row.size;

        // Two stages on blocking threads: the writer writes each batch at its offset and hands
        // it on to the hasher, which returns the batch's budget once hashed.
        let (wtx, mut wrx) = tokio::sync::mpsc::channel::<Batch>(HASH_QUEUE);
        let (htx, hrx) = tokio::sync::mpsc::channel::<Batch>(HASH_QUEUE);
        let hashing = HashThread::spawn(hasher, hrx);
        let writer = tokio::task::spawn_blocking(move || -> (Staging, io::Result<u64>) {
            let st = st_back;
            let mut at = start;
            let res = (|| {
                while let Some(batch) = wrx.blocking_recv() {
                    for c in &batch.chunks {
                        st.file.write_all_at(c, at)?;
                        at += c.len() as u64;
                    }
                    if htx.blocking_send(batch).is_err() {
                        return Err(io::Error::other("hashing thread stopped"));
                    }
                }
                drop(htx);
                // The chunk is durable before the row that records it.
                st.file.sync_data()?;
                Ok(at - start)
            })();
            (st, res)
        });
        let mut feeder = Feeder::new(wtx);
        let mut received = 0u64;
        let failure = loop {
            let chunk = match body.next().await {
                None => break None,
                Some(Ok(c)) => c,
                Some(Err(e)) => {
                    break Some(Error::Body {
                        received,
                        message: e.to_string(),
                    })
                }
            };
            received += chunk.len() as u64;
            let held = match feeder.take(&self.budget, chunk.len()).await {
                Ok(h) => h,
                Err(e) => break Some(e),
            };
            if feeder.feed(chunk, held).await.is_err() {
                break Some(Error::Corrupt("staging writer stopped".into()));
            }
        };
        let _ = feeder.close().await;
        drop(feeder);
        let (st, written) = writer
            .await
            .map_err(|e| Error::Corrupt(format!("staging writer failed: {e}")))?;
        let hasher = hash::join(hashing).await;
        // A failed chunk leaves its bytes past the recorded size; the next chunk cuts them off.
        if let Some(e) = failure {
            return Err(e);
        }
        let written = written.map_err(|e| local_error(&st.path, e))?;
        let hasher = hasher?;
        if let Some(declared) = check.len {
            if declared != written {
                return Err(Error::SizeMismatch {
                    declared,
                    received: written,
                });
            }
        }
        if written == 0 {
            return Ok((row, hasher));
        }
        let mut new = row;
        new.size += written;
        new.parts = vec![Part {
            key: paths::upload_data(&new.id).to_string(),
            size: new.size,
        }];
        new.hash_state = Some(hashstate::save(&hasher));
        let advanced = self.meta.advance_upload(&new.id, start, &new).await?;
        drop(st); // unlocks: the next chunk may start
        if !advanced {
            let current = self.meta.get_upload(&new.repo, &new.id).await?;
            return Err(Error::OutOfOrder {
                offset: current.size,
                start,
            });
        }
        Ok((new, hasher))
    }

    /// The hasher over everything session `row` holds on a local store (finish without a
    /// final chunk).
    pub(super) async fn hasher_local(&self, root: PathBuf, row: &UploadRow) -> Result<Sha256> {
        if let Some(h) = row.hash_state.as_deref().and_then(hashstate::restore) {
            return Ok(h);
        }
        if row.size == 0 {
            return Ok(Sha256::new());
        }
        tracing::warn!(upload = %row.id, "saved hash state unusable; re-hashing the staged file");
        let row = row.clone();
        blocking(move || {
            let mut st = open_locked(&root, &row.id).map_err(|e| local_error(&root, e))?;
            prepare(&root, &mut st, &row)?;
            rehash(&mut st, row.size).map_err(|e| local_error(&st.path, e))
        })
        .await
    }

    /// Makes session `row`'s verified bytes the blob `digest`: the staging file, cut to the
    /// recorded size and synced, gets the digest's key as a second name (a hard link) and that
    /// directory is synced. A blob already there with the right size was put there the same
    /// way, so it is kept. The session keeps its file until the caller has linked the blob
    /// and closed the session: a crash in between leaves a session that still finishes.
    pub(super) async fn commit_local(&self, root: PathBuf, row: &UploadRow, digest: &Digest) -> Result<()> {
        let row = row.clone();
        let dest = root.join(paths::blob(digest).as_ref());
        blocking(move || {
            let mut st = open_locked(&root, &row.id).map_err(|e| local_error(&root, e))?;
            prepare(&root, &mut st, &row)?;
            if std::fs::metadata(&dest).map(|m| m.len()).ok() == Some(row.size) {
                return Ok(());
            }
            st.file.sync_data().map_err(|e| local_error(&st.path, e))?;
            durable::link_into(&root, &st.path, &dest).map_err(|e| local_error(&dest, e))
        })
        .await
    }
}
