//! Blob bytes over any [`ObjectStore`].
//!
//! Reads (stat, ranged get, list, presigned URLs) and deletes go through object_store for every
//! backend. Writes are the upload engines' (`upload/local.rs` for a local directory, which
//! writes and syncs files itself because object_store's LocalFileSystem never syncs;
//! `upload/multipart.rs` for object stores, through the `mp_*` calls here): bytes reach
//! `blobs/` only after the caller verified the digest, by a link on a file system or a
//! multipart completion or copy on an object store, so a reader never sees a partial blob.

use crate::error::{Error, Result};
use crate::paths;
use object_store::signer::Signer;

mod open;
use berth_oci::Digest;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, GetResultPayload, ObjectStore, WriteMultipart};
pub use open::{AzureOptions, Backend, GcsOptions, S3Options, StorageOptions};
use sha2::{Digest as _, Sha256};
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

/// Size of the parts handed to the backend while streaming a chunk in. Large enough that a
/// local file system sees few, big writes; S3's 5 MiB minimum part size is below it.
const PART_CHUNK: usize = 8 * 1024 * 1024;
/// Parts in flight to the backend per stream: bounds memory per upload to ~PART_CHUNK × this.
const PART_CONCURRENCY: usize = 2;
/// Read size when serving a blob from a local file: 8 KiB reads (object_store's default) cost
/// a thread hop each; 256 KiB reaches page-cache speed (measured ~2 GB/s, `berth-bench --only
/// blob-get`) while a download holds at most ~1 MiB in its queue.
const READ_CHUNK: usize = 256 * 1024;
/// Smallest part a multipart upload takes but for its last (S3's limit): fewer bytes wait in
/// a staged object until more arrive.
const MIN_PART: usize = 5 * 1024 * 1024;
/// Largest object S3 copies in one request; bigger blobs are streamed to their key instead.
const MAX_COPY: u64 = 5 * 1024 * 1024 * 1024;

/// A multipart-capable backend, and the prefix its keys live under.
#[derive(Clone)]
struct Multipart {
    store: Arc<dyn MultipartStore>,
    prefix: Option<Path>,
    min_part: usize,
    part_size: usize,
}

/// A blob being read: its total size and the requested bytes as a stream.
pub struct BlobRead {
    /// Size of the whole blob (not of the range).
    pub size: u64,
    /// The bytes of the requested range.
    pub stream: BoxStream<'static, std::io::Result<Bytes>>,
}

/// A backend's URL signer (S3, GCS, Azure), and the prefix the store's keys live under.
#[derive(Clone)]
struct Presigner {
    signer: Arc<dyn Signer>,
    prefix: Option<Path>,
}

/// Blob bytes, content-addressed, over an object store.
#[derive(Clone)]
pub struct BlobStore {
    pub(crate) store: Arc<dyn ObjectStore>,
    /// The directory of a local store, for what object_store does not show: its own staging
    /// files (`<key>#<n>`, which its listings skip) and directories a rename left empty.
    local_root: Option<PathBuf>,
    /// The backend's multipart API, when it has one: uploads then send their chunks as parts
    /// of one multipart upload (see `upload.rs`) instead of an object per chunk.
    multipart: Option<Multipart>,
    /// Which backend, for logs and checks.
    backend: Backend,
    /// Signs URLs that let a client read a blob from the backend directly.
    signer: Option<Presigner>,
}

impl BlobStore {
    /// A store over any backend.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        BlobStore {
            store,
            local_root: None,
            multipart: None,
            backend: Backend::Custom,
            signer: None,
        }
    }

    /// A store whose uploads go through `multipart` (the same backend as `store`, whose keys
    /// live under `prefix` when `store` is a prefixed view of it).
    pub fn with_multipart(
        store: Arc<dyn ObjectStore>,
        multipart: Arc<dyn MultipartStore>,
        prefix: Option<&str>,
    ) -> Self {
        BlobStore {
            store,
            local_root: None,
            multipart: Some(Multipart {
                store: multipart,
                prefix: prefix.filter(|p| !p.is_empty()).map(Path::from),
                min_part: MIN_PART,
                part_size: PART_CHUNK,
            }),
            backend: Backend::Custom,
            signer: None,
        }
    }

    /// An in-memory store, uploads through its multipart API: the object-store code path
    /// without an object store (tests, throw-away registries).
    pub fn memory() -> Self {
        let m = Arc::new(object_store::memory::InMemory::new());
        let mut s = Self::with_multipart(m.clone(), m, None);
        s.backend = Backend::Memory;
        s
    }

    /// Test hook: smaller multipart parts, so small uploads exercise them.
    #[doc(hidden)]
    pub fn with_part_sizes(mut self, min_part: usize, part_size: usize) -> Self {
        if let Some(m) = &mut self.multipart {
            m.min_part = min_part;
            m.part_size = part_size.max(min_part);
        }
        self
    }

    /// Opens the store a URL names: `file:///PATH`, `memory://`, `s3://BUCKET/PREFIX`,
    /// `gs://BUCKET/PREFIX` or `az://CONTAINER/PREFIX`, with `opts` for the cloud backends (credentials: see
    /// `blob/open.rs`).
    pub fn open(url: &str, opts: &StorageOptions) -> Result<Self> {
        open::open(url, opts)
    }

    /// Which backend the store writes to.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether the backend can sign URLs for direct downloads (S3, GCS, Azure).
    pub fn can_presign(&self) -> bool {
        self.signer.is_some()
    }

    /// A URL from which anyone holding it may GET the blob's bytes straight from the backend
    /// for `expires_in`; `None` when the backend cannot sign. Whoever hands it out must have
    /// checked access first: the URL is the access.
    pub async fn presigned_get(&self, digest: &Digest, expires_in: std::time::Duration) -> Result<Option<String>> {
        let Some(p) = &self.signer else { return Ok(None) };
        let key = paths::blob(digest);
        let full = match &p.prefix {
            Some(prefix) => Path::from_iter(prefix.parts().chain(key.parts())),
            None => key.clone(),
        };
        // The signer takes http's Method; parsing infers it, so this crate needs no HTTP
        // dependency of its own.
        let get = "GET"
            .parse()
            .map_err(|_| Error::Config("GET is not an HTTP method".into()))?;
        let url = p
            .signer
            .signed_url(get, &full, expires_in)
            .await
            .map_err(Error::backend(&key))?;
        Ok(Some(url.to_string()))
    }

    /// Whether uploads go through the backend's multipart API.
    pub fn multipart_enabled(&self) -> bool {
        self.multipart.is_some()
    }

    fn mp(&self) -> Result<&Multipart> {
        self.multipart
            .as_ref()
            .ok_or_else(|| Error::Config("this store has no multipart API".into()))
    }

    fn mp_key(m: &Multipart, key: &Path) -> Path {
        match &m.prefix {
            Some(p) => Path::from_iter(p.parts().chain(key.parts())),
            None => key.clone(),
        }
    }

    /// Smallest multipart part but the last, and the size parts are cut to.
    pub fn part_sizes(&self) -> (usize, usize) {
        self.multipart
            .as_ref()
            .map_or((MIN_PART, PART_CHUNK), |m| (m.min_part, m.part_size))
    }

    /// Starts a multipart upload writing `key`; returns its id.
    pub async fn mp_create(&self, key: &Path) -> Result<String> {
        let m = self.mp()?;
        m.store
            .create_multipart(&Self::mp_key(m, key))
            .await
            .map_err(Error::backend(key))
    }

    /// Uploads part `idx` (0-based) of a multipart upload; returns the backend's id for it.
    pub async fn mp_put_part(&self, key: &Path, id: &str, idx: usize, data: Bytes) -> Result<String> {
        let m = self.mp()?;
        let part = m
            .store
            .put_part(&Self::mp_key(m, key), &id.to_owned(), idx, data.into())
            .await
            .map_err(Error::backend(key))?;
        Ok(part.content_id)
    }

    /// Completes a multipart upload from its parts' ids, in order: `key` appears whole.
    pub async fn mp_complete(&self, key: &Path, id: &str, parts: &[String]) -> Result<()> {
        let m = self.mp()?;
        let parts = parts
            .iter()
            .map(|c| object_store::multipart::PartId { content_id: c.clone() })
            .collect();
        m.store
            .complete_multipart(&Self::mp_key(m, key), &id.to_owned(), parts)
            .await
            .map_err(Error::backend(key))?;
        Ok(())
    }

    /// Abandons a multipart upload and its parts. An upload already gone is success.
    pub async fn mp_abort(&self, key: &Path, id: &str) -> Result<()> {
        let m = self.mp()?;
        match m.store.abort_multipart(&Self::mp_key(m, key), &id.to_owned()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::backend(key)(e)),
        }
    }

    /// Writes a small staged object in one request.
    pub async fn put_staged(&self, key: &Path, data: Bytes) -> Result<()> {
        self.store.put(key, data.into()).await.map_err(Error::backend(key))?;
        Ok(())
    }

    /// Reads staged objects whole, concatenated (only ever less than a part's worth).
    pub async fn read_staged(&self, keys: &[Path]) -> Result<Bytes> {
        let mut out = bytes::BytesMut::new();
        for k in keys {
            let mut s = self.read_part(k).await?;
            while let Some(chunk) = s.next().await {
                out.extend_from_slice(&chunk.map_err(Error::backend(k))?);
            }
        }
        Ok(out.freeze())
    }

    /// Makes `data` (verified by the caller) the blob `digest`, in one atomic PUT.
    pub async fn put_blob(&self, digest: &Digest, data: Bytes) -> Result<()> {
        let key = paths::blob(digest);
        self.store.put(&key, data.into()).await.map_err(Error::backend(&key))?;
        Ok(())
    }

    /// Makes the object at `staged` (verified by the caller) the blob `digest`, then removes
    /// `staged`: a server-side copy up to S3's 5 GiB limit, a streamed one beyond.
    pub async fn commit_staged(&self, staged: &Path, digest: &Digest, size: u64) -> Result<()> {
        let key = paths::blob(digest);
        if size <= MAX_COPY {
            self.store.copy(staged, &key).await.map_err(Error::backend(staged))?;
        } else {
            let upload = self.store.put_multipart(&key).await.map_err(Error::backend(&key))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_CHUNK);
            let mut s = self.read_part(staged).await?;
            while let Some(chunk) = s.next().await {
                match chunk {
                    Ok(c) => {
                        writer
                            .wait_for_capacity(PART_CONCURRENCY)
                            .await
                            .map_err(Error::backend(&key))?;
                        writer.put(c);
                    }
                    Err(e) => {
                        let _ = writer.abort().await;
                        return Err(Error::backend(staged)(e));
                    }
                }
            }
            writer.finish().await.map_err(Error::backend(&key))?;
        }
        self.delete_key(staged).await
    }

    /// A store in a local directory (created if missing).
    pub fn local(root: &std::path::Path) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(|e| Error::Backend {
            key: root.display().to_string(),
            source: object_store::Error::Generic {
                store: "LocalFileSystem",
                source: Box::new(e),
            },
        })?;
        // No automatic cleanup of empty directories: it climbs up to `uploads/` and `blobs/`
        // themselves, and a concurrent writer whose create_dir_all loses an ancestor midway
        // fails. Session directories are removed by name instead (see `delete_parts`); the
        // at most 256 fan-out directories per algorithm stay.
        let fs = LocalFileSystem::new_with_prefix(root).map_err(Error::backend(&Path::from("/")))?;
        let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_owned());
        Ok(BlobStore {
            store: Arc::new(fs),
            local_root: Some(root),
            multipart: None,
            backend: Backend::File,
            signer: None,
        })
    }

    /// The directory of a local store, where the local upload engine writes.
    pub(crate) fn local_root(&self) -> Option<&std::path::Path> {
        self.local_root.as_deref()
    }

    /// Size of the blob if its bytes are present.
    pub async fn stat(&self, digest: &Digest) -> Result<Option<u64>> {
        let key = paths::blob(digest);
        match self.store.head(&key).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::backend(&key)(e)),
        }
    }

    /// Reads `range` (already validated against the size) or the whole blob.
    pub async fn get(&self, digest: &Digest, range: Option<Range<u64>>) -> Result<BlobRead> {
        let key = paths::blob(digest);
        let opts = GetOptions {
            range: range.map(GetRange::Bounded),
            ..Default::default()
        };
        let res = self.store.get_opts(&key, opts).await.map_err(Error::backend(&key))?;
        let size = res.meta.size;
        let range = res.range.clone();
        let stream = match res.payload {
            GetResultPayload::File(file, _) => file_stream(file, range),
            GetResultPayload::Stream(s) => s.map_err(std::io::Error::other).boxed(),
        };
        Ok(BlobRead { size, stream })
    }

    /// Moves the blob's bytes aside to the quarantine (a rename on a file system, a copy and
    /// delete on object stores); returns where they went.
    pub async fn quarantine(&self, digest: &Digest) -> Result<Path> {
        let key = paths::blob(digest);
        let at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let to = paths::quarantine(digest, at);
        self.store.rename(&key, &to).await.map_err(Error::backend(&key))?;
        Ok(to)
    }

    /// Removes the blob's bytes. Absent is success.
    pub async fn delete(&self, digest: &Digest) -> Result<()> {
        self.delete_key(&paths::blob(digest)).await
    }

    async fn delete_key(&self, key: &Path) -> Result<()> {
        match self.store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::backend(key)(e)),
        }
    }

    /// Reads a staged part, with large reads for local files (object_store's own stream reads
    /// 8 KiB per thread hop, which made finishing a chunked upload crawl).
    async fn read_part(&self, part: &Path) -> Result<BoxStream<'static, object_store::Result<Bytes>>> {
        let res = self
            .store
            .get_opts(part, GetOptions::default())
            .await
            .map_err(Error::backend(part))?;
        let range = res.range.clone();
        Ok(match res.payload {
            GetResultPayload::File(file, path) => file_stream(file, range)
                .map_err(move |e| object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: format!("reading {}: {e}", path.display()).into(),
                })
                .boxed(),
            GetResultPayload::Stream(s) => s,
        })
    }

    /// Checks that every staged part still has the size recorded when it was accepted: after a
    /// crash a part may come back short, and the saved hash state would not notice.
    pub async fn check_parts(&self, parts: &[(Path, u64)]) -> Result<()> {
        for (key, size) in parts {
            let actual = match self.store.head(key).await {
                Ok(m) => m.size,
                Err(object_store::Error::NotFound { .. }) => 0,
                Err(e) => return Err(Error::backend(key)(e)),
            };
            if actual != *size {
                return Err(Error::UploadDamaged {
                    key: key.to_string(),
                    expected: *size,
                    actual,
                });
            }
        }
        Ok(())
    }

    /// Hashes staged parts from storage: the fallback when a saved hash state cannot be used.
    pub async fn rehash(&self, parts: &[Path]) -> Result<Sha256> {
        let mut h = Sha256::new();
        for part in parts {
            let mut s = self.read_part(part).await?;
            while let Some(chunk) = s.next().await {
                h.update(&chunk.map_err(Error::backend(part))?);
            }
        }
        Ok(h)
    }

    /// Best-effort removal of staged parts (and, on a local store, of their session
    /// directories once empty); leftovers are swept by the collector.
    pub async fn delete_parts(&self, parts: &[Path]) {
        let mut sessions = Vec::new();
        for p in parts {
            if let Err(e) = self.delete_key(p).await {
                tracing::warn!(key = %p, error = %e, "could not remove staged part");
            }
            if let Some(s) = paths::session_of_upload(p) {
                if !sessions.contains(&s) {
                    sessions.push(s);
                }
            }
        }
        for s in sessions {
            self.remove_upload_dir(&s).await;
        }
    }

    /// Every committed blob in the store and its size; keys that are not blob keys are
    /// skipped with a warning.
    pub async fn list_blobs(&self) -> Result<Vec<(Digest, u64)>> {
        let root = paths::blobs_root();
        let metas: Vec<_> = self
            .store
            .list(Some(&root))
            .try_collect()
            .await
            .map_err(Error::backend(&root))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| match paths::digest_of_blob(&m.location) {
                Some(d) => Some((d, m.size)),
                None => {
                    tracing::warn!(key = %m.location, "not a blob key: left alone");
                    None
                }
            })
            .collect())
    }

    /// Ids of the upload sessions that have anything stored (on a local store, a directory
    /// counts, even empty).
    pub async fn list_upload_sessions(&self) -> Result<Vec<String>> {
        let root = paths::uploads_root();
        match self.store.list_with_delimiter(Some(&root)).await {
            Ok(l) => Ok(l
                .common_prefixes
                .iter()
                .chain(l.objects.iter().map(|o| &o.location))
                .filter_map(paths::session_of_upload)
                .collect()),
            Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(Error::backend(&root)(e)),
        }
    }

    /// Removes everything staged for `session`: its objects and, on a local store, the
    /// staging files of interrupted writes and the directory. Returns how many objects and
    /// files went.
    pub async fn delete_upload_dir(&self, session: &str) -> Result<u64> {
        let dir = paths::upload_dir(session);
        if let Some(root) = &self.local_root {
            // On a local store the directory holds everything, object_store's hidden staging
            // files included: remove the tree.
            let path = root.join(dir.as_ref());
            return tokio::task::spawn_blocking(move || remove_tree(&path))
                .await
                .map_err(|e| Error::Corrupt(format!("cleanup thread failed: {e}")))?
                .map_err(|e| local_error(&dir, e));
        }
        let keys: Vec<_> = match self.store.list(Some(&dir)).try_collect::<Vec<_>>().await {
            Ok(k) => k,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(Error::backend(&dir)(e)),
        };
        let mut removed = 0;
        for k in keys {
            self.delete_key(&k.location).await?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Removes `session`'s directory on a local store if it is empty, as a rename of its one
    /// part leaves it. Best effort: a chunk arriving meanwhile recreates it.
    pub async fn remove_upload_dir(&self, session: &str) {
        if let Some(root) = &self.local_root {
            let _ = tokio::fs::remove_dir(root.join(paths::upload_dir(session).as_ref())).await;
        }
    }

    /// On a local store, the staging files that interrupted multipart writes left under
    /// `blobs/` (object_store names them `<key>#<n>` and its listings skip them): each with
    /// the digest it was being written as and its modification time.
    pub async fn local_blob_staging(&self) -> Result<Vec<(PathBuf, Option<Digest>, SystemTime)>> {
        let Some(root) = self.local_root.clone() else {
            return Ok(Vec::new());
        };
        let blobs = paths::blobs_root();
        let dir = root.join(blobs.as_ref());
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            staging_files(&root, &dir, &mut out)?;
            Ok(out)
        })
        .await
        .map_err(|e| Error::Corrupt(format!("cleanup thread failed: {e}")))?
        .map_err(|e| local_error(&blobs, e))
    }

    /// Removes a file found by [`Self::local_blob_staging`]. Absent is success.
    pub async fn remove_local_file(&self, path: PathBuf) -> Result<()> {
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(local_error(&Path::from(path.display().to_string()), e)),
        }
    }

    /// Checks the backend answers (for readiness probes).
    pub async fn ping(&self) -> Result<()> {
        let key = Path::from("blobs");
        self.store
            .list_with_delimiter(Some(&key))
            .await
            .map(|_| ())
            .map_err(Error::backend(&key))
    }
}

fn local_error(key: &Path, e: std::io::Error) -> Error {
    Error::Backend {
        key: key.to_string(),
        source: object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(e),
        },
    }
}

/// Removes a directory tree, tolerating entries that vanish meanwhile (a finishing upload
/// removes its own); returns how many files it removed. A directory that gains an entry
/// meanwhile stays, for the next run.
fn remove_tree(path: &std::path::Path) -> std::io::Result<u64> {
    use std::io::ErrorKind::{DirectoryNotEmpty, NotFound};
    let entries = match std::fs::read_dir(path) {
        Ok(e) => e,
        Err(e) if e.kind() == NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut n = 0;
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) if e.kind() == NotFound => continue,
            Err(e) => return Err(e),
        };
        let p = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => n += remove_tree(&p)?,
            Ok(_) => match std::fs::remove_file(&p) {
                Ok(()) => n += 1,
                Err(e) if e.kind() == NotFound => {}
                Err(e) => return Err(e),
            },
            Err(e) if e.kind() == NotFound => {}
            Err(e) => return Err(e),
        }
    }
    match std::fs::remove_dir(path) {
        Ok(()) => Ok(n),
        Err(e) if matches!(e.kind(), NotFound | DirectoryNotEmpty) => Ok(n),
        Err(e) => Err(e),
    }
}

/// Collects object_store's local staging files (`<name>#<digits>`) under `dir`, with the
/// digest named by the key they were staged for.
fn staging_files(
    root: &std::path::Path,
    dir: &std::path::Path,
    out: &mut Vec<(PathBuf, Option<Digest>, SystemTime)>,
) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        let ft = e.file_type()?;
        let path = e.path();
        if ft.is_dir() {
            staging_files(root, &path, out)?;
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((base, n)) = name.rsplit_once('#') else {
            continue;
        };
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let digest = path
            .parent()
            .and_then(|p| p.strip_prefix(root).ok())
            .map(|p| Path::from(format!("{}/{base}", p.display())))
            .and_then(|k| paths::digest_of_blob(&k));
        let modified = e.metadata()?.modified()?;
        out.push((path, digest, modified));
    }
    Ok(())
}

/// Streams a byte range of a local file with large reads on a blocking thread.
fn file_stream(file: std::fs::File, range: Range<u64>) -> BoxStream<'static, std::io::Result<Bytes>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut file = file;
        let mut remaining = range.end - range.start;
        if let Err(e) = file.seek(SeekFrom::Start(range.start)) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        while remaining > 0 {
            let n = remaining.min(READ_CHUNK as u64) as usize;
            // `read_to_end` fills the spare capacity without zeroing it first: one copy
            // from the page cache per byte, nothing more.
            let mut buf = Vec::with_capacity(n);
            match (&mut file).take(n as u64).read_to_end(&mut buf) {
                Ok(got) if got == n => {
                    remaining -= n as u64;
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return; // the client went away
                    }
                }
                Ok(got) => {
                    let _ = tx.blocking_send(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("blob file ended {} bytes early", remaining - got as u64),
                    )));
                    return;
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    async fn read_all(s: &BlobStore, d: &Digest, r: Option<Range<u64>>) -> Vec<u8> {
        let read = s.get(d, r).await.expect("get");
        let parts: Vec<Bytes> = read.stream.try_collect().await.expect("stream");
        parts.concat()
    }

    /// The suite every backend passes for reads and deletes (writes are the upload engines',
    /// tested in `upload.rs`): whole and ranged reads, listing, deleting twice.
    async fn suite(s: BlobStore, _raw: Arc<dyn ObjectStore>) {
        let data = b"hello, world".to_vec();
        let d = Digest::of(&data);
        assert_eq!(s.stat(&d).await.expect("stat"), None);
        s.put_blob(&d, Bytes::from(data.clone())).await.expect("put");
        assert_eq!(s.stat(&d).await.expect("stat"), Some(12));
        assert_eq!(read_all(&s, &d, None).await, data);
        assert_eq!(read_all(&s, &d, Some(7..12)).await, b"world");
        assert_eq!(s.list_blobs().await.expect("list"), vec![(d.clone(), 12)]);
        s.put_blob(&Digest::empty(), Bytes::new()).await.expect("empty");
        assert_eq!(s.stat(&Digest::empty()).await.expect("stat"), Some(0));
        assert_eq!(read_all(&s, &Digest::empty(), None).await, b"");
        s.delete(&d).await.expect("delete");
        s.delete(&d).await.expect("delete twice");
        assert_eq!(s.stat(&d).await.expect("stat"), None);
    }

    #[tokio::test]
    async fn memory_backend() {
        let raw: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        suite(BlobStore::new(raw.clone()), raw).await;
    }

    #[tokio::test]
    async fn s3_backend() {
        let Some((url, opts)) = crate::testing::fresh_s3() else {
            return;
        };
        let s = BlobStore::open(&url, &opts).expect("s3 store");
        let raw = s.store.clone();
        suite(s, raw).await;
    }

    #[tokio::test]
    async fn local_backend() {
        let dir = tempfile::tempdir().expect("tempdir");
        let raw: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).expect("fs"));
        suite(BlobStore::local(dir.path()).expect("local"), raw).await;
    }
}
