//! One node's state root and the handles every operation shares.
//!
//! # Layout
//! ```text
//! <root>/node.lock            flock: held while image or container records change
//! <root>/gc.lock              flock: pulls hold it shared, prune exclusive
//! <root>/content/             blobs by digest (see [`crate::content`])
//! <root>/snapshots/           overlay snapshots (see [`crate::snapshot`])
//! <root>/images.json          image records: reference → manifest, config, chain IDs
//! <root>/containers/<id>/     one bundle per container: config.json, rootfs/, state, logs
//! <root>/runc/                state of an external OCI runtime (`--runtime runc`)
//! ```
//! Several berth-node processes may run at once (a `run` beside a detached container's
//! supervisor beside a `pull`), so shared records change only under the root's lock and are
//! written by temp + rename.

use crate::content::ContentStore;
use crate::error::{Error, Result};
use crate::snapshot::{Overlay, Snapshotter};
use berth_client::transport::Options;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The node: its root and stores.
#[derive(Clone)]
pub struct Node {
    /// The state root (`/var/lib/berth` by default).
    pub root: PathBuf,
    /// Blobs.
    pub content: ContentStore,
    /// Snapshots.
    pub snapshots: Arc<dyn Snapshotter>,
    /// How to reach registries.
    pub registry: Options,
    /// The OCI runtime binary to use instead of the embedded runtime (`runc`), if any.
    pub runtime: Option<String>,
    /// Keep compressed layers in the content store after unpacking them. Off by default,
    /// like containerd's `discard_unpacked_layers`: a node runs images, it does not serve
    /// them, and the unpacked snapshot is what it needs; keeping both doubles the disk
    /// written per pull. Manifests and configs are always kept.
    pub keep_layers: bool,
    /// The most one layer may unpack to, in bytes (`--max-layer-size`): a sparse or
    /// compressed bomb stops there (see [`crate::unpack::apply_capped`]).
    pub max_layer_size: u64,
}

/// The root's lock, held until dropped.
pub struct Lock(#[allow(dead_code)] nix::fcntl::Flock<File>);

impl Node {
    /// Opens (creating) the node state under `root`.
    pub fn open(root: &Path, registry: Options, runtime: Option<String>) -> Result<Node> {
        std::fs::create_dir_all(root.join("containers")).map_err(Error::io(root))?;
        let content = ContentStore::open(root)?;
        let snapshots = Arc::new(Overlay::new(root)?);
        Ok(Node {
            root: root.to_owned(),
            content,
            snapshots,
            registry,
            runtime,
            keep_layers: false,
            max_layer_size: crate::unpack::DEFAULT_MAX_LAYER_SIZE,
        })
    }

    /// Takes the root's lock (blocking while another process holds it).
    pub fn lock(&self) -> Result<Lock> {
        flock(&self.root.join("node.lock"), true)
    }

    /// The GC lock: pulls hold it shared for their whole run, `prune` exclusive, so prune
    /// never takes a layer that a pull committed but has not recorded yet.
    pub fn gc_lock(&self, exclusive: bool) -> Result<Lock> {
        flock(&self.root.join("gc.lock"), exclusive)
    }

    /// Directory of container `id`.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.root.join("containers").join(id)
    }
}

/// Opens (creating) `p` and takes an flock on it, waiting for other holders.
fn flock(p: &Path, exclusive: bool) -> Result<Lock> {
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(p)
        .map_err(Error::io(p))?;
    let arg = if exclusive {
        nix::fcntl::FlockArg::LockExclusive
    } else {
        nix::fcntl::FlockArg::LockShared
    };
    nix::fcntl::Flock::lock(f, arg)
        .map(Lock)
        .map_err(|(_, e)| Error::io(p)(e.into()))
}

/// Writes `bytes` to `path` by temp + rename, so readers see the old or the new file whole.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{:08x}", rand::random::<u32>()));
    std::fs::write(&tmp, bytes).map_err(Error::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path)(e)
    })
}
