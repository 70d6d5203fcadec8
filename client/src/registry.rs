//! The distribution API, one repository at a time: manifests, blobs (resumable downloads,
//! monolithic or chunked uploads with resume, cross-repository mounts), tags, catalog.

use crate::error::{Error, Result};
use crate::transport::Transport;
use berth_oci::{media, Digest};
use futures::StreamExt as _;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE};
use reqwest::{Method, StatusCode};
use sha2::{Digest as _, Sha256};
use std::io::{Seek as _, SeekFrom};
use std::path::Path;
use std::sync::Arc;

/// Blobs up to this size go in one PUT; larger ones in chunks of this size, each resumable.
/// Large on purpose: a registry stores each chunk as a part and must concatenate the parts
/// when the upload finishes (a server-side copy of the whole blob), so chunks are worth their
/// cost only where a retry of the whole blob would cost more.
pub const CHUNK: u64 = 512 * 1024 * 1024;

/// A manifest as fetched.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The exact bytes.
    pub bytes: Vec<u8>,
    /// Its media type (Content-Type, else the body's `mediaType`).
    pub media_type: String,
    /// Its digest (computed, and checked against the reference when that is a digest).
    pub digest: Digest,
}

/// What refers to a manifest within its repository (see [`Repo::holders`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holders {
    /// Tags that point at it.
    pub tags: Vec<String>,
    /// Tagged indexes that list it: the tag and the index's digest.
    pub indexes: Vec<(String, Digest)>,
}

impl Holders {
    /// Nothing refers to it.
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty() && self.indexes.is_empty()
    }
}

impl std::fmt::Display for Holders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if !self.tags.is_empty() {
            parts.push(format!("tagged {}", self.tags.join(", ")));
        }
        for (tag, d) in &self.indexes {
            parts.push(format!("listed by the index {d} (tag {tag})"));
        }
        f.write_str(&parts.join("; "))
    }
}

/// How a blob reached the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uploaded {
    /// It was there already.
    Existed,
    /// Mounted from another repository: no bytes sent.
    Mounted,
    /// Sent.
    Sent,
}

/// Whether a downloaded blob must survive a crash once it has its final name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Its data reaches the disk (`fdatasync`) before it is renamed to its final name: for
    /// blobs that stay, such as an image layout's. The rename itself becomes durable when the
    /// caller syncs the directory (an image layout does before it records the blob).
    Durable,
    /// No sync: for a temporary file that is read back and deleted (a copy between
    /// registries), where a crash loses nothing that matters.
    Temporary,
}

/// Pieces of a download waiting for the writer: hyper hands over up to ~400 KiB at a time, so
/// at most ~6.5 MiB per download, enough to ride out the writer's stalls (a pull of 600 MB
/// took 4% longer with 4, at 21 MiB of RSS against 38 MiB with 16).
const WRITE_QUEUE: usize = 16;

/// Writeback of a durable download is started each time this much more has been written.
const WRITEBACK_STEP: u64 = 8 << 20;

/// What the receiving task hands the writer.
enum Piece {
    /// The next bytes of the blob.
    Bytes(bytes::Bytes),
    /// The server ignored `Range`: drop what was written and start over.
    Restart,
    /// Every byte was received: sync (when durable) and return the digest.
    End,
}

/// The writer of one download, on a blocking thread: appends each piece to `file` and hashes
/// it, until [`Piece::End`] (or until the receiving side goes away, which abandons the file).
/// Returns the SHA-256 and the length of what was written.
fn write_hashed(
    mut file: std::fs::File,
    mut rx: tokio::sync::mpsc::Receiver<Piece>,
    path: &Path,
    durability: Durability,
) -> Result<(sha2::digest::Output<Sha256>, u64)> {
    use std::io::Write as _;
    let io = |e: std::io::Error| Error::local(path, e);
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    // Bytes before this offset have had their writeback started.
    let mut flushed = 0u64;
    loop {
        match rx.blocking_recv() {
            Some(Piece::Bytes(b)) => {
                hasher.update(&b);
                file.write_all(&b).map_err(io)?;
                written += b.len() as u64;
                if durability == Durability::Durable && written - flushed >= WRITEBACK_STEP {
                    start_writeback(&file, flushed, written - flushed);
                    flushed = written;
                }
            }
            Some(Piece::Restart) => {
                file.set_len(0).map_err(io)?;
                file.seek(SeekFrom::Start(0)).map_err(io)?;
                hasher = Sha256::new();
                written = 0;
                flushed = 0;
            }
            Some(Piece::End) => break,
            None => return Err(io(std::io::Error::other("download abandoned"))),
        }
    }
    if durability == Durability::Durable {
        file.sync_data().map_err(io)?;
    }
    Ok((hasher.finalize(), written))
}

/// Asks the kernel to start writing `len` bytes at `offset` of `file` to disk, without waiting
/// and without flushing metadata or the disk's cache (`sync_file_range(SYNC_FILE_RANGE_WRITE)`;
/// the `fdatasync` that follows makes them durable). Only a head start: failures are ignored,
/// the `fdatasync` reports them. Without it the kernel keeps a fresh download dirty until its
/// dirty ratio is reached (GBs here), and the final `fdatasync` writes the whole blob out
/// while the pull waits.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd as _;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: plain syscall on a file descriptor that `file` keeps open for the duration of
    // the call; no memory is passed to the kernel.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Elsewhere the final `fdatasync` does all the work.
#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &std::fs::File, _offset: u64, _len: u64) {}

/// One repository on one registry.
#[derive(Clone)]
pub struct Repo {
    /// The registry.
    pub t: Arc<Transport>,
    /// Repository name.
    pub name: String,
    /// Upload chunk size: blobs up to it go in one PUT (default [`CHUNK`]).
    pub chunk: u64,
}

fn accept_all() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        ACCEPT,
        HeaderValue::from_static(
            "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
             application/vnd.docker.distribution.manifest.v2+json, \
             application/vnd.docker.distribution.manifest.list.v2+json",
        ),
    );
    h
}

fn file_body(path: &Path, offset: u64, len: u64) -> Result<reqwest::Body> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::local(path, e))?;
    f.seek(SeekFrom::Start(offset)).map_err(|e| Error::local(path, e))?;
    let f = tokio::io::AsyncReadExt::take(tokio::fs::File::from_std(f), len);
    Ok(reqwest::Body::wrap_stream(tokio_util_reader(f)))
}

/// A byte stream over an async reader, in 256 KiB reads.
fn tokio_util_reader<R: tokio::io::AsyncRead + Send + Unpin + 'static>(
    r: R,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    futures::stream::unfold(r, |mut r| async move {
        let mut buf = vec![0u8; 256 * 1024];
        match tokio::io::AsyncReadExt::read(&mut r, &mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), r))
            }
            Err(e) => Some((Err(e), r)),
        }
    })
}

impl Repo {
    /// A repository on a registry.
    pub fn new(t: Arc<Transport>, name: &str) -> Repo {
        Repo {
            t,
            name: name.to_owned(),
            chunk: CHUNK,
        }
    }

    fn pull_scope(&self) -> String {
        format!("repository:{}:pull", self.name)
    }

    fn push_scope(&self) -> String {
        format!("repository:{}:pull,push", self.name)
    }

    /// Fetches a manifest by tag or digest.
    pub async fn manifest(&self, reference: &str) -> Result<Manifest> {
        let path = format!("/v2/{}/manifests/{reference}", self.name);
        let r = self
            .t
            .send(Method::GET, &path, &self.pull_scope(), accept_all(), None)
            .await?;
        if r.status() != StatusCode::OK {
            return Err(self.t.fail(r).await);
        }
        let ct = r
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_owned());
        let bytes = r.bytes().await.map_err(|e| Error::Network {
            registry: self.t.registry.clone(),
            message: format!("reading manifest {reference}: {e}"),
        })?;
        if bytes.len() > 16 * 1024 * 1024 {
            return Err(Error::Usage(format!(
                "manifest {reference} is larger than 16 MiB: refusing it"
            )));
        }
        let digest = Digest::of(&bytes);
        if let Ok(want) = reference.parse::<Digest>() {
            if want != digest {
                return Err(Error::DigestMismatch {
                    what: format!("manifest {}@{want}", self.name),
                    expected: want.to_string(),
                    actual: digest.to_string(),
                });
            }
        }
        let body_type = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["mediaType"].as_str().map(str::to_owned));
        let media_type = ct
            .filter(|c| media::MANIFEST_TYPES.contains(&c.as_str()))
            .or(body_type)
            .unwrap_or_else(|| media::OCI_MANIFEST.to_owned());
        Ok(Manifest {
            bytes: bytes.to_vec(),
            media_type,
            digest,
        })
    }

    /// The digest a tag or digest resolves to (HEAD).
    pub async fn resolve(&self, reference: &str) -> Result<Digest> {
        let path = format!("/v2/{}/manifests/{reference}", self.name);
        let r = self
            .t
            .send(Method::HEAD, &path, &self.pull_scope(), accept_all(), None)
            .await?;
        if r.status() == StatusCode::NOT_FOUND {
            // A HEAD answer has no body to name what is missing: say it here.
            return Err(Error::Registry {
                registry: self.t.registry.clone(),
                status: 404,
                code: "MANIFEST_UNKNOWN".into(),
                message: format!("{}:{reference} not found", self.name),
                hint: String::new(),
            });
        }
        if r.status() != StatusCode::OK {
            return Err(self.t.fail(r).await);
        }
        match r.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()) {
            Some(d) => d
                .parse()
                .map_err(|e| Error::Usage(format!("registry sent a bad digest: {e}"))),
            None => Ok(self.manifest(reference).await?.digest),
        }
    }

    /// Stores a manifest under a tag or its digest; returns its digest.
    pub async fn put_manifest(&self, reference: &str, bytes: &[u8], media_type: &str) -> Result<Digest> {
        let path = format!("/v2/{}/manifests/{reference}", self.name);
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(media_type) {
            h.insert(CONTENT_TYPE, v);
        }
        let body = bytes::Bytes::copy_from_slice(bytes);
        let make = move || reqwest::Body::from(body.clone());
        let r = self
            .t
            .send(Method::PUT, &path, &self.push_scope(), h, Some(&make))
            .await?;
        if r.status() != StatusCode::CREATED {
            return Err(self.t.fail(r).await);
        }
        Ok(Digest::of(bytes))
    }

    /// Deletes a manifest by digest.
    pub async fn delete_manifest(&self, digest: &Digest) -> Result<()> {
        let path = format!("/v2/{}/manifests/{digest}", self.name);
        let scope = format!("repository:{}:delete", self.name);
        let r = self
            .t
            .send(Method::DELETE, &path, &scope, HeaderMap::new(), None)
            .await?;
        if r.status() != StatusCode::ACCEPTED && r.status() != StatusCode::OK {
            return Err(self.t.fail(r).await);
        }
        Ok(())
    }

    /// Deletes a tag; the manifest it points at stays (with its other tags, and in any index
    /// that lists it). The registry must support tag deletion (distribution 2.x does not).
    pub async fn delete_tag(&self, tag: &str) -> Result<()> {
        let path = format!("/v2/{}/manifests/{tag}", self.name);
        let scope = format!("repository:{}:delete", self.name);
        let r = self
            .t
            .send(Method::DELETE, &path, &scope, HeaderMap::new(), None)
            .await?;
        if r.status() != StatusCode::ACCEPTED && r.status() != StatusCode::OK {
            return Err(self.t.fail(r).await);
        }
        Ok(())
    }

    /// What in this repository still refers to manifest `digest`, as far as tags show: the
    /// tags that point at it, and the tagged indexes that list it. Deleting it by digest takes
    /// those tags with it and leaves those indexes broken (a pull of that platform fails once
    /// the collector has run).
    pub async fn holders(&self, digest: &Digest) -> Result<Holders> {
        let tags = self.tags().await?;
        let found = futures::stream::iter(tags.into_iter().map(|tag| async move {
            let m = self.manifest(&tag).await?;
            let listed = if media::is_index(&m.media_type) && &m.digest != digest {
                berth_oci::manifest::parse(&m.bytes, Some(&m.media_type))
                    .map(|p| p.manifests.iter().any(|c| &c.digest == digest))
                    .unwrap_or(false)
            } else {
                false
            };
            Ok::<_, Error>((tag, m.digest, listed))
        }))
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
        let mut holders = Holders::default();
        for r in found {
            match r {
                Ok((tag, d, _)) if &d == digest => holders.tags.push(tag),
                Ok((tag, d, true)) => holders.indexes.push((tag, d)),
                Ok(_) => {}
                // A tag deleted meanwhile refers to nothing.
                Err(Error::Registry { status: 404, .. }) => {}
                Err(e) => return Err(e),
            }
        }
        holders.tags.sort();
        holders.indexes.sort();
        Ok(holders)
    }

    /// All tags, following `Link` pages.
    pub async fn tags(&self) -> Result<Vec<String>> {
        let first = format!("/v2/{}/tags/list?n=1000", self.name);
        paginate(&self.t, &first, &self.pull_scope(), "tags").await
    }

    /// The blob's size if the registry has it in this repository.
    pub async fn blob_size(&self, d: &Digest) -> Result<Option<u64>> {
        let path = format!("/v2/{}/blobs/{d}", self.name);
        let r = self
            .t
            .send(Method::HEAD, &path, &self.pull_scope(), HeaderMap::new(), None)
            .await?;
        match r.status() {
            StatusCode::OK => Ok(r
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .or(Some(0))),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.t.fail(r).await),
        }
    }

    /// Opens blob `d` for streaming from byte `from` on (a `Range` request when `from > 0`).
    /// Returns the response and the offset its body starts at: 0 when the server ignored
    /// the range, so a caller resuming a stream must skip what it already has. The caller
    /// verifies the digest; this is for consumers that process bytes as they arrive (the
    /// node unpacks layers while they download) rather than landing them in a file first.
    pub async fn open_blob(&self, d: &Digest, from: u64) -> Result<(reqwest::Response, u64)> {
        let path = format!("/v2/{}/blobs/{d}", self.name);
        let mut h = HeaderMap::new();
        if from > 0 {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes={from}-")) {
                h.insert(RANGE, v);
            }
        }
        let r = self.t.send(Method::GET, &path, &self.pull_scope(), h, None).await?;
        match r.status() {
            StatusCode::OK => Ok((r, 0)),
            StatusCode::PARTIAL_CONTENT => Ok((r, from)),
            _ => Err(self.t.fail(r).await),
        }
    }

    /// Downloads a blob to `dest`, resuming with `Range` after a dropped connection, verifying
    /// the digest before the file gets its final name (via `partial`). [`Durability::Durable`]:
    /// a blob that stays (an image layout).
    pub async fn download(
        &self,
        d: &Digest,
        partial: &Path,
        dest: &Path,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<u64> {
        self.download_with(d, partial, dest, Durability::Durable, progress)
            .await
    }

    /// [`Repo::download`] with a choice of [`Durability`].
    ///
    /// The bytes are hashed and written on a blocking thread fed through a bounded channel,
    /// so hashing (the largest cost of a pull: SHA-256 runs at ~1.5 GB/s here) and the page
    /// cache copy overlap with receiving the next bytes instead of taking turns with it on the
    /// receiving task; the channel's bound keeps a slow disk from buffering the blob in memory.
    /// A durable download asks the kernel to start writing back each few MiB as they are
    /// written, so the `fdatasync` before the rename waits for the last few MiB only, not for
    /// the whole blob to go to disk after the last byte arrived.
    pub async fn download_with(
        &self,
        d: &Digest,
        partial: &Path,
        dest: &Path,
        durability: Durability,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<u64> {
        let path = format!("/v2/{}/blobs/{d}", self.name);
        // A name of its own for this download (two pulls into one layout must not write one
        // file), removed if the download fails or is cancelled before its rename.
        let unique = partial.with_extension(format!("{}.partial", uuid::Uuid::new_v4().simple()));
        let guard = RemoveOnDrop(Some(unique.clone()));
        let partial = unique.as_path();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(partial)
            .map_err(|e| Error::local(partial, e))?;
        let (tx, rx) = tokio::sync::mpsc::channel(WRITE_QUEUE);
        let writer = {
            let partial = partial.to_owned();
            tokio::task::spawn_blocking(move || write_hashed(file, rx, &partial, durability))
        };
        // Bytes handed to the writer so far: where a resumed request starts.
        let mut received = 0u64;
        let mut failures = 0u32;
        // Sends a piece to the writer; `false` when the writer stopped (it failed: its result
        // says why).
        let feed = |piece: Piece| {
            let tx = &tx;
            async move { tx.send(piece).await.is_ok() }
        };
        let completed = 'download: loop {
            let mut h = HeaderMap::new();
            if received > 0 {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes={received}-")) {
                    h.insert(RANGE, v);
                }
            }
            let r = self.t.send(Method::GET, &path, &self.pull_scope(), h, None).await?;
            match r.status() {
                StatusCode::OK if received > 0 => {
                    // The server ignored the range: start over.
                    if !feed(Piece::Restart).await {
                        break 'download false;
                    }
                    received = 0;
                }
                StatusCode::OK | StatusCode::PARTIAL_CONTENT => {}
                _ => return Err(self.t.fail(r).await),
            }
            let mut stream = r.bytes_stream();
            let mut broke = None;
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(c) => {
                        let n = c.len() as u64;
                        if !feed(Piece::Bytes(c)).await {
                            break 'download false;
                        }
                        received += n;
                        progress(n);
                    }
                    Err(e) => {
                        broke = Some(e);
                        break;
                    }
                }
            }
            match broke {
                None => break feed(Piece::End).await,
                Some(e) => {
                    failures += 1;
                    if failures > 5 {
                        return Err(Error::Network {
                            registry: self.t.registry.clone(),
                            message: format!("downloading {d}: {e} (gave up after {failures} attempts)"),
                        });
                    }
                    tracing::info!(digest = %d, received, error = %e, "download interrupted; resuming");
                    tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(failures))).await;
                }
            }
        };
        drop(tx);
        // The writer's error (a full disk) explains a stop better than the stop itself.
        let (hash, written) = writer
            .await
            .map_err(|e| Error::local(partial, format!("writing the download failed: {e}")))??;
        if !completed {
            return Err(Error::local(partial, "the download's writer stopped early"));
        }
        let actual = Digest::from_sha256(&hash);
        if &actual != d {
            return Err(Error::DigestMismatch {
                what: format!("blob {} from {}", d, self.t.registry),
                expected: d.to_string(),
                actual: actual.to_string(),
            });
        }
        // The data is on disk (when durable) before the name appears: after a crash, a blob
        // under its final name holds its bytes, never zeros or a torn tail.
        tokio::fs::rename(partial, dest)
            .await
            .map_err(|e| Error::local(dest, e))?;
        std::mem::forget(guard);
        Ok(written)
    }

    /// Uploads the blob in `src` (already verified by the caller) unless the repository has it:
    /// mounted from `mount_from` when given and possible, else one PUT for small blobs or
    /// resumable chunks for large ones.
    pub async fn upload(
        &self,
        d: &Digest,
        size: u64,
        src: &Path,
        mount_from: Option<&str>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Uploaded> {
        // Existing and mounted blobs report no progress: no bytes moved.
        if self.blob_size(d).await?.is_some() {
            return Ok(Uploaded::Existed);
        }
        let start = match mount_from {
            Some(from) => format!("/v2/{}/blobs/uploads/?mount={d}&from={from}", self.name),
            None => format!("/v2/{}/blobs/uploads/", self.name),
        };
        let scope = match mount_from {
            Some(from) => format!("{} repository:{from}:pull", self.push_scope()),
            None => self.push_scope(),
        };
        let r = self
            .t
            .send(Method::POST, &start, &scope, HeaderMap::new(), None)
            .await?;
        if r.status() == StatusCode::CREATED && mount_from.is_some() {
            return Ok(Uploaded::Mounted);
        }
        if r.status() != StatusCode::ACCEPTED {
            return Err(self.t.fail(r).await);
        }
        let mut location = self.location(&r)?;
        let finish = |loc: &str| {
            let sep = if loc.contains('?') { '&' } else { '?' };
            format!("{loc}{sep}digest={d}")
        };
        if size <= self.chunk {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            h.insert(CONTENT_LENGTH, HeaderValue::from(size));
            let src_owned = src.to_owned();
            let make = move || file_body(&src_owned, 0, size).unwrap_or_else(|_| reqwest::Body::from(Vec::new()));
            let r = self
                .t
                .send(Method::PUT, &finish(&location), &scope, h, Some(&make))
                .await?;
            if r.status() != StatusCode::CREATED {
                return Err(self.t.fail(r).await);
            }
            progress(size);
            return Ok(Uploaded::Sent);
        }
        let mut offset = 0u64;
        let mut failures = 0;
        while offset < size {
            let len = self.chunk.min(size - offset);
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            h.insert(CONTENT_LENGTH, HeaderValue::from(len));
            if let Ok(v) = HeaderValue::from_str(&format!("{offset}-{}", offset + len - 1)) {
                h.insert(CONTENT_RANGE, v);
            }
            let src_owned = src.to_owned();
            let make = move || file_body(&src_owned, offset, len).unwrap_or_else(|_| reqwest::Body::from(Vec::new()));
            let sent = self.t.send(Method::PATCH, &location, &scope, h, Some(&make)).await;
            match sent {
                Ok(r) if r.status() == StatusCode::ACCEPTED => {
                    location = self.location(&r).unwrap_or(location);
                    offset += len;
                    progress(len);
                    continue;
                }
                Ok(r) if r.status() != StatusCode::RANGE_NOT_SATISFIABLE => return Err(self.t.fail(r).await),
                Ok(_) | Err(_) if failures < 5 => {
                    failures += 1;
                    // Ask the session where it stands and continue from there.
                    let r = self
                        .t
                        .send(Method::GET, &location, &scope, HeaderMap::new(), None)
                        .await?;
                    if r.status() != StatusCode::NO_CONTENT {
                        return Err(self.t.fail(r).await);
                    }
                    let end = r
                        .headers()
                        .get(RANGE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.rsplit('-').next()?.parse::<u64>().ok());
                    let resumed = match end {
                        Some(e) if offset > 0 || e > 0 => e + 1,
                        _ => 0,
                    };
                    tracing::info!(digest = %d, from = resumed, "upload interrupted; resuming");
                    location = self.location(&r).unwrap_or(location);
                    offset = resumed;
                }
                Ok(r) => return Err(self.t.fail(r).await),
                Err(e) => return Err(e),
            }
        }
        let r = self
            .t
            .send(Method::PUT, &finish(&location), &scope, HeaderMap::new(), None)
            .await?;
        if r.status() != StatusCode::CREATED {
            return Err(self.t.fail(r).await);
        }
        Ok(Uploaded::Sent)
    }

    /// Mounts a blob from `from` (same registry); `false` when the registry opened an upload
    /// session instead (which is then abandoned).
    pub async fn mount(&self, d: &Digest, from: &str) -> Result<bool> {
        let path = format!("/v2/{}/blobs/uploads/?mount={d}&from={from}", self.name);
        let scope = format!("{} repository:{from}:pull", self.push_scope());
        let r = self.t.send(Method::POST, &path, &scope, HeaderMap::new(), None).await?;
        match r.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => {
                if let Ok(loc) = self.location(&r) {
                    let _ = self.t.send(Method::DELETE, &loc, &scope, HeaderMap::new(), None).await;
                }
                Ok(false)
            }
            _ => Err(self.t.fail(r).await),
        }
    }

    fn location(&self, r: &reqwest::Response) -> Result<String> {
        r.headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| Error::Network {
                registry: self.t.registry.clone(),
                message: "upload answered no Location".into(),
            })
    }
}

/// Removes a file when dropped (a download that failed or was cancelled midway).
struct RemoveOnDrop(Option<std::path::PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Every repository (`_catalog`), following `Link` pages.
pub async fn catalog(t: &Transport) -> Result<Vec<String>> {
    paginate(t, "/v2/_catalog?n=1000", "registry:catalog:*", "repositories").await
}

async fn paginate(t: &Transport, first: &str, scope: &str, key: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut next = Some(first.to_owned());
    let mut seen = std::collections::HashSet::new();
    while let Some(path) = next.take() {
        if !seen.insert(path.clone()) {
            // A registry that links a page to itself (or back) would loop forever.
            break;
        }
        let r = t.send(Method::GET, &path, scope, HeaderMap::new(), None).await?;
        if r.status() != StatusCode::OK {
            return Err(t.fail(r).await);
        }
        next = r.headers().get("link").and_then(|v| v.to_str().ok()).and_then(|l| {
            l.split_once('<')
                .and_then(|(_, rest)| rest.split_once('>'))
                .map(|(u, _)| u.to_owned())
        });
        let body = r.bytes().await.map_err(|e| Error::Network {
            registry: t.registry.clone(),
            message: e.to_string(),
        })?;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let page: Vec<String> = v[key]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        if page.is_empty() {
            break;
        }
        out.extend(page);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the writer over `pieces` on a blocking thread, as a download does.
    async fn write(durability: Durability, pieces: Vec<Piece>, end: bool) -> (Result<(Digest, u64)>, Vec<u8>) {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("blob.partial");
        let file = std::fs::File::create(&path).expect("create");
        let (tx, rx) = tokio::sync::mpsc::channel(WRITE_QUEUE);
        let p = path.clone();
        let writer = tokio::task::spawn_blocking(move || write_hashed(file, rx, &p, durability));
        for piece in pieces {
            tx.send(piece).await.expect("writer alive");
        }
        if end {
            tx.send(Piece::End).await.expect("writer alive");
        }
        drop(tx);
        let result = writer.await.expect("joined").map(|(h, n)| (Digest::from_sha256(&h), n));
        (result, std::fs::read(&path).expect("read"))
    }

    #[tokio::test]
    async fn writer_hashes_what_it_writes_across_writeback_steps() {
        // Pieces adding up to more than two writeback steps, so writeback is started midway.
        let piece = vec![7u8; 3 << 20];
        let pieces = (0..6)
            .map(|_| Piece::Bytes(bytes::Bytes::from(piece.clone())))
            .collect();
        let (result, content) = write(Durability::Durable, pieces, true).await;
        let (digest, n) = result.expect("written");
        assert_eq!(n, 18 << 20);
        assert_eq!(content.len(), 18 << 20);
        assert_eq!(digest, Digest::of(&content));
    }

    #[tokio::test]
    async fn writer_restart_forgets_what_came_before() {
        let pieces = vec![
            Piece::Bytes(bytes::Bytes::from_static(b"stale half")),
            Piece::Restart,
            Piece::Bytes(bytes::Bytes::from_static(b"whole ")),
            Piece::Bytes(bytes::Bytes::from_static(b"blob")),
        ];
        let (result, content) = write(Durability::Temporary, pieces, true).await;
        assert_eq!(content, b"whole blob");
        assert_eq!(result.expect("written"), (Digest::of(b"whole blob"), 10));
    }

    #[tokio::test]
    async fn writer_without_an_end_reports_the_download_abandoned() {
        let pieces = vec![Piece::Bytes(bytes::Bytes::from_static(b"half"))];
        let (result, _) = write(Durability::Durable, pieces, false).await;
        let err = result.expect_err("no End: nothing to vouch for");
        assert!(err.to_string().contains("abandoned"), "{err}");
    }
}
