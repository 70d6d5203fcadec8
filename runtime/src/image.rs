//! Images on the node: their records, and the pull pipeline that fills the content store and
//! the snapshots.
//!
//! # The pull pipeline
//! 1. Resolve the reference; fetch the manifest (for an index, the child for this platform)
//!    and the config into the content store.
//! 2. Compute each layer's chain ID from the config's `diff_ids`
//!    (ChainID(L0) = DiffID(L0); ChainID(n) = sha256(ChainID(n-1) + " " + DiffID(n))). A layer
//!    whose chain snapshot exists is neither downloaded nor unpacked.
//! 3. Every other layer, in parallel: one HTTP stream feeds one blocking thread that hashes
//!    the compressed bytes (and, with `--keep-layers`, tees them into the content store),
//!    decompresses, and unpacks into a fresh active snapshot — so no layer is read twice,
//!    and unpacking overlaps the download. The thread checks the uncompressed digest against
//!    `diff_ids[n]` and the compressed digest and size against the manifest; either mismatch
//!    discards the layer.
//! 4. In layer order, each unpacked snapshot is committed under its chain ID with the
//!    previous chain ID as parent. One `syncfs` makes it all durable, and only then is the
//!    image recorded: a crash leaves unreferenced content (pruned later), never an image
//!    whose layers are half on disk.

use crate::error::{Error, Result};
use crate::node::{write_atomic, Node};
use crate::snapshot::Kind;
use berth_client::reference::Reference;
use berth_client::registry::Repo;
use berth_client::transport::Transport;
use berth_oci::manifest::Descriptor;
use berth_oci::{media, Digest};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};
use std::sync::Arc;

/// The parts of an OCI image config the node uses.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    /// CPU architecture.
    #[serde(default)]
    pub architecture: String,
    /// Operating system.
    #[serde(default)]
    pub os: String,
    /// How to run it.
    #[serde(default)]
    pub config: Option<RunConfig>,
    /// The layers' uncompressed digests.
    pub rootfs: RootFs,
}

/// `config` of an image config: docker's field names.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    /// `user`, `uid`, `user:group` or `uid:gid`.
    #[serde(default)]
    pub user: Option<String>,
    /// `KEY=value` pairs.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// Entrypoint argv.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// Working directory.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Signal for `stop` (`SIGTERM` when unset).
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// Labels.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Uncompressed layer digests, bottom first.
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

#[derive(Deserialize)]
struct ImageManifest {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// An image the node has: what `images.json` records per reference.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    /// The reference it was pulled as (`127.0.0.1:5000/team/app:1`).
    pub name: String,
    /// The digest the reference resolved to (an index's, for multi-platform images).
    pub repo_digest: Digest,
    /// The image manifest used (this platform's).
    pub manifest: Digest,
    /// Blobs only the record keeps alive (the index, when there is one).
    #[serde(default)]
    pub extra: Vec<Digest>,
    /// The config; its digest is the image ID.
    pub config: Digest,
    /// The compressed layers, bottom first.
    pub layers: Vec<Descriptor>,
    /// Chain IDs, bottom first: the last names the top snapshot.
    pub chain_ids: Vec<Digest>,
    /// Size of all layers, compressed (what a pull transfers).
    pub size: u64,
    /// Seconds since the epoch when pulled.
    pub pulled: u64,
}

impl ImageRecord {
    /// Every blob this record keeps in the content store.
    pub fn blobs(&self) -> impl Iterator<Item = &Digest> {
        [&self.repo_digest, &self.manifest, &self.config]
            .into_iter()
            .chain(self.extra.iter())
            .chain(self.layers.iter().map(|l| &l.digest))
    }

    /// The top snapshot (none for an image without layers).
    pub fn top(&self) -> Option<&Digest> {
        self.chain_ids.last()
    }
}

/// Chain IDs for `diff_ids`, bottom first.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => Digest::of(format!("{parent} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// The image records, by name.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Images {
    /// Records by reference name.
    pub images: BTreeMap<String, ImageRecord>,
}

impl Images {
    /// Reads the records (none yet is an empty set).
    pub fn load(node: &Node) -> Result<Images> {
        let p = node.root.join("images.json");
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                Error::Image(format!(
                    "{}: not an image list ({e}); move it away to start over",
                    p.display()
                ))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Images::default()),
            Err(e) => Err(Error::io(&p)(e)),
        }
    }

    /// Writes the records (the caller holds the node lock).
    pub fn save(&self, node: &Node) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::Image(e.to_string()))?;
        write_atomic(&node.root.join("images.json"), &bytes)
    }

    /// Finds an image by reference (`x`, `x:tag`, `host/x@sha256:…`), by full or short image
    /// ID (the config digest), or by its name exactly.
    pub fn find(&self, what: &str) -> Option<&ImageRecord> {
        if let Some(r) = self.images.get(what) {
            return Some(r);
        }
        if let Ok(r) = Reference::parse(what) {
            if let Some(rec) = self.images.get(&normalize(&r)) {
                return Some(rec);
            }
            if let Some(d) = &r.digest {
                return self.images.values().find(|i| &i.repo_digest == d || &i.manifest == d);
            }
        }
        let hex = what.strip_prefix("sha256:").unwrap_or(what);
        if hex.len() >= 12 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return self.images.values().find(|i| i.config.hex().starts_with(hex));
        }
        None
    }
}

/// The name a reference is recorded under: `registry/repository:tag` (tag `latest` when
/// none), or `registry/repository@digest` when only a digest is given.
pub fn normalize(r: &Reference) -> String {
    match (&r.tag, &r.digest) {
        (Some(t), _) => format!("{}/{}:{t}", r.registry, r.repository),
        (None, Some(d)) => format!("{}/{}@{d}", r.registry, r.repository),
        (None, None) => format!("{}/{}:latest", r.registry, r.repository),
    }
}

/// This host's platform as `os/arch` in OCI terms.
pub fn host_platform() -> String {
    berth_oci::platform::host()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A transport to the registry of `r`, with credentials from docker's config (shared with
/// `berth login` and `docker login`).
pub fn transport(node: &Node, r: &Reference) -> Result<Arc<Transport>> {
    let config = berth_client::credentials::DockerConfig::load_default().map_err(|e| Error::Usage(e.to_string()))?;
    let credential = config
        .get(&r.credential_key())
        .map_err(|e| Error::Usage(e.to_string()))?;
    Ok(Arc::new(Transport::new(
        &r.registry,
        r.api_host(),
        r.is_loopback(),
        credential,
        &node.registry,
    )?))
}

/// What a pull did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PullReport {
    /// Layers downloaded and unpacked.
    pub unpacked: usize,
    /// Layers whose snapshot was already there.
    pub reused: usize,
    /// Compressed bytes downloaded.
    pub downloaded: u64,
}

/// Pulls `r` for `platform` (`os/arch[/variant]`), records it, and returns its record.
pub async fn pull(node: &Node, r: &Reference, platform: &str) -> Result<(ImageRecord, PullReport)> {
    let gc = node.clone();
    let _gc = tokio::task::spawn_blocking(move || gc.gc_lock(false))
        .await
        .map_err(|e| Error::Runtime(format!("lock task failed: {e}")))??;
    let repo = Repo::new(transport(node, r)?, &r.repository);
    let top = repo.manifest(&r.reference()).await?;
    node.content.put(&top.digest, &top.bytes)?;
    let mut extra = Vec::new();
    let (manifest_digest, manifest_bytes) = if media::is_index(&top.media_type) {
        let index: berth_oci::manifest::ParsedManifest = berth_oci::manifest::parse(&top.bytes, Some(&top.media_type))
            .map_err(|e| Error::Image(format!("{r}: index {}: {e}", top.digest)))?;
        let child = index
            .manifests
            .iter()
            .find(|d| berth_oci::platform::matches(d, platform))
            .ok_or_else(|| Error::Image(format!("{r}: the image has no variant for platform {platform}")))?;
        let m = repo.manifest(&child.digest.to_string()).await?;
        node.content.put(&m.digest, &m.bytes)?;
        extra.push(top.digest.clone());
        (m.digest, m.bytes)
    } else {
        (top.digest.clone(), top.bytes)
    };
    let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| Error::Image(format!("{r}: manifest {manifest_digest} is not an image manifest: {e}")))?;

    let config_bytes = match node.content.read(&manifest.config.digest) {
        Ok(b) => b,
        Err(_) => {
            let (resp, _) = repo.open_blob(&manifest.config.digest, 0).await?;
            let bytes = resp.bytes().await.map_err(|e| {
                Error::Registry(berth_client::Error::Network {
                    registry: r.registry.clone(),
                    message: format!("reading config {}: {e}", manifest.config.digest),
                })
            })?;
            node.content.put(&manifest.config.digest, &bytes)?;
            bytes.to_vec()
        }
    };
    let config: ImageConfig = serde_json::from_slice(&config_bytes).map_err(|e| {
        Error::Image(format!(
            "{r}: config {} is not an image config: {e}",
            manifest.config.digest
        ))
    })?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(Error::Image(format!(
            "{r}: the manifest has {} layers but the config lists {} diff_ids",
            manifest.layers.len(),
            config.rootfs.diff_ids.len()
        )));
    }
    let chains = chain_ids(&config.rootfs.diff_ids);

    let mut report = PullReport::default();
    let mut jobs = Vec::new();
    for (i, layer) in manifest.layers.iter().enumerate() {
        if has_committed(node, &chains[i])? {
            report.reused += 1;
            continue;
        }
        let node = node.clone();
        let repo = repo.clone();
        let layer = layer.clone();
        let diff_id = config.rootfs.diff_ids[i].clone();
        jobs.push(async move {
            let key = format!("extract-{}-{:08x}", diff_id.hex(), rand::random::<u32>());
            let res = unpack_layer(&node, &repo, &layer, &diff_id, &key).await;
            (i, key, res)
        });
    }
    // Bounded parallelism: enough streams to fill the link, few enough not to thrash 2 cores.
    let mut done: HashMap<usize, String> = HashMap::new();
    let mut failure = None;
    let mut results = futures::stream::iter(jobs).buffer_unordered(4);
    while let Some((i, key, res)) = results.next().await {
        match res {
            Ok(n) => {
                report.downloaded += n;
                report.unpacked += 1;
                done.insert(i, key);
            }
            Err(e) => {
                let _ = remove_snapshot(node, &key).await;
                failure.get_or_insert(e);
            }
        }
    }
    if let Some(e) = failure {
        for key in done.values() {
            let _ = remove_snapshot(node, key).await;
        }
        return Err(e);
    }

    // Commit in order, each onto its parent.
    for (i, chain) in chains.iter().enumerate() {
        let Some(key) = done.remove(&i) else { continue };
        let parent = i.checked_sub(1).map(|p| chains[p].to_string());
        let snaps = node.snapshots.clone();
        let name = chain.to_string();
        let res = tokio::task::spawn_blocking(move || {
            let r = snaps.commit_onto(&name, &key, parent.as_deref());
            if r.is_err() {
                let _ = snaps.remove(&key);
            }
            r
        })
        .await
        .map_err(|e| Error::Runtime(format!("commit task failed: {e}")))?;
        match res {
            Ok(()) => {}
            // Another pull committed the same layer first: identical content.
            Err(crate::snapshot::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let content = node.content.clone();
    tokio::task::spawn_blocking(move || content.sync())
        .await
        .map_err(|e| Error::Runtime(format!("sync task failed: {e}")))??;

    let record = ImageRecord {
        name: normalize(r),
        repo_digest: top.digest,
        manifest: manifest_digest,
        extra,
        config: manifest.config.digest.clone(),
        layers: manifest.layers.clone(),
        chain_ids: chains,
        size: 0,
        pulled: now(),
    };
    let record = ImageRecord {
        size: image_size(node, &record),
        ..record
    };
    let _lock = node.lock()?;
    let mut images = Images::load(node)?;
    images.images.insert(record.name.clone(), record.clone());
    images.save(node)?;
    Ok((record, report))
}

/// The image's size as the registry serves it (compressed layers): known without reading
/// the snapshots, and what a pull costs.
fn image_size(_node: &Node, rec: &ImageRecord) -> u64 {
    rec.layers.iter().map(|l| l.size).sum()
}

fn has_committed(node: &Node, chain: &Digest) -> Result<bool> {
    Ok(node
        .snapshots
        .stat(&chain.to_string())?
        .is_some_and(|i| matches!(i.kind, Kind::Committed)))
}

async fn remove_snapshot(node: &Node, key: &str) -> Result<()> {
    let snaps = node.snapshots.clone();
    let key = key.to_owned();
    tokio::task::spawn_blocking(move || snaps.remove(&key))
        .await
        .map_err(|e| Error::Runtime(format!("remove task failed: {e}")))??;
    Ok(())
}

/// Feeds a blocking reader from chunks an async task sends.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<bytes::Bytes>>,
    current: bytes::Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(e),
                // The sender finished: end of stream.
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Hashes and counts the compressed stream as it is read (the blob's digest and size), and
/// copies it into a content writer when compressed layers are kept.
struct Tee<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
    out: Option<crate::content::Writer>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        if let Some(w) = self.out.as_mut() {
            io::Write::write_all(w, &buf[..n])?;
        }
        Ok(n)
    }
}

/// Downloads (or reads from the content store) one layer and unpacks it into a new active
/// snapshot `key`; returns the compressed bytes downloaded.
async fn unpack_layer(node: &Node, repo: &Repo, layer: &Descriptor, diff_id: &Digest, key: &str) -> Result<u64> {
    let snaps = node.snapshots.clone();
    let k = key.to_owned();
    let upper = tokio::task::spawn_blocking(move || -> Result<std::path::PathBuf> {
        snaps.prepare(&k, None, BTreeMap::new())?;
        Ok(snaps.upper(&k)?)
    })
    .await
    .map_err(|e| Error::Runtime(format!("prepare task failed: {e}")))??;

    let local = node.content.size(&layer.digest) == Some(layer.size);
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<bytes::Bytes>>(64);
    let media_type = layer.media_type.clone();
    let expected = diff_id.clone();
    let ldigest = layer.digest.clone();
    let lsize = layer.size;
    let max_layer_size = node.max_layer_size;
    let writer = if local || !node.keep_layers {
        None
    } else {
        Some(node.content.writer(&layer.digest, Some(layer.size))?)
    };
    let source: Box<dyn Read + Send> = if local {
        let p = node.content.path(&layer.digest);
        Box::new(std::fs::File::open(&p).map_err(Error::io(&p))?)
    } else {
        Box::new(ChannelReader {
            rx,
            current: bytes::Bytes::new(),
        })
    };
    let worker = tokio::task::spawn_blocking(move || -> Result<()> {
        let unpack_err = |source| Error::Unpack {
            layer: ldigest.clone(),
            source,
        };
        let mut tee = Tee {
            inner: source,
            hasher: Sha256::new(),
            size: 0,
            out: writer,
        };
        let applied = {
            let decompressed = crate::unpack::decompressor(&media_type, &mut tee).map_err(unpack_err)?;
            crate::unpack::apply_capped(decompressed, &upper, max_layer_size).map_err(unpack_err)?
        };
        // Whatever the decompressor left still counts toward the compressed digest.
        io::copy(&mut tee, &mut io::sink()).map_err(|e| Error::io(&upper)(e))?;
        let actual = Digest::from_sha256(&std::mem::take(&mut tee.hasher).finalize());
        if actual != ldigest || tee.size != lsize {
            return Err(Error::Image(format!(
                "layer {ldigest} ({lsize} bytes) arrived as {actual} ({} bytes): refusing it",
                tee.size
            )));
        }
        if applied.diff_id != expected {
            return Err(Error::Image(format!(
                "layer {ldigest} uncompresses to {}, but the image config says {expected}: refusing it",
                applied.diff_id
            )));
        }
        if let Some(w) = tee.out.take() {
            w.commit()?;
        }
        Ok(())
    });
    let mut downloaded = 0u64;
    if !local {
        let res = feed(repo, &layer.digest, tx).await;
        match res {
            Ok(n) => downloaded = n,
            Err(e) => {
                // The worker sees the stream end early and fails; report the network cause.
                let _ = worker.await;
                return Err(e);
            }
        }
    }
    worker
        .await
        .map_err(|e| Error::Runtime(format!("unpack task failed: {e}")))??;
    Ok(downloaded)
}

/// Streams blob `d` into `tx`, resuming with `Range` when the connection drops.
async fn feed(repo: &Repo, d: &Digest, tx: tokio::sync::mpsc::Sender<io::Result<bytes::Bytes>>) -> Result<u64> {
    let mut sent = 0u64;
    let mut failures = 0u32;
    loop {
        let (resp, start) = repo.open_blob(d, sent).await?;
        let mut skip = sent - start;
        let mut stream = resp.bytes_stream();
        let mut broke = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(mut c) => {
                    if skip > 0 {
                        let n = skip.min(c.len() as u64) as usize;
                        let _ = c.split_to(n);
                        skip -= n as u64;
                        if c.is_empty() {
                            continue;
                        }
                    }
                    sent += c.len() as u64;
                    if tx.send(Ok(c)).await.is_err() {
                        // The unpacker stopped (it failed): it reports why.
                        return Ok(sent);
                    }
                }
                Err(e) => {
                    broke = Some(e);
                    break;
                }
            }
        }
        match broke {
            None => return Ok(sent),
            Some(e) => {
                failures += 1;
                if failures > 5 {
                    let _ = tx
                        .send(Err(io::Error::other(format!("download of {d} failed: {e}"))))
                        .await;
                    return Err(Error::Registry(berth_client::Error::Network {
                        registry: repo.t.registry.clone(),
                        message: format!("downloading {d}: {e} (gave up after {failures} attempts)"),
                    }));
                }
                tracing::info!(digest = %d, sent, error = %e, "layer download interrupted; resuming");
                tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(failures))).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a: Digest = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            .parse()
            .unwrap();
        let b: Digest = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
            .parse()
            .unwrap();
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        assert_eq!(c[1], Digest::of(format!("{a} {b}").as_bytes()));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn references_normalize_like_docker() {
        let n = |s: &str| normalize(&Reference::parse(s).unwrap());
        assert_eq!(n("127.0.0.1:5000/x"), "127.0.0.1:5000/x:latest");
        assert_eq!(n("127.0.0.1:5000/x:1"), "127.0.0.1:5000/x:1");
        assert_eq!(n("busybox"), "docker.io/library/busybox:latest");
    }
}
