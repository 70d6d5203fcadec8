//! Snapshots: the filesystems containers run on, built layer by layer.
//!
//! # Words
//! - **snapshot**: a directory tree the snapshotter owns, named by a **key**, with at most one
//!   **parent**. Its contents are the parent's contents plus its own changes, so a chain of
//!   snapshots stacks like the layers of an image.
//! - **active**: a writable snapshot, made by [`Snapshotter::prepare`]. Its changes go into its
//!   own *upper* directory. A layer is unpacked into an active snapshot; a container runs on one.
//! - **committed**: a read-only snapshot made from an active one by [`Snapshotter::commit`],
//!   under a new name. Only committed snapshots can be parents, which is what makes it safe to
//!   share them: nothing ever writes into a parent again.
//! - **view**: a read-only snapshot of a committed parent, made by [`Snapshotter::view`]; it
//!   cannot be committed.
//! - **chain ID**: the name the node gives a committed layer snapshot, per the OCI image spec
//!   (`ChainID(L₀) = DiffID(L₀)`, `ChainID(L₀…Lₙ) = sha256(ChainID(L₀…Lₙ₋₁) + " " + DiffID(Lₙ))`).
//!   It names the whole stack below and including the layer, so two images that share their
//!   bottom layers share those snapshots, and a snapshot's name alone says what is in it.
//!
//! # Lifecycle
//! Pulling an image with layers `L₀…Lₙ`, for each layer in order:
//! 1. if [`Snapshotter::stat`] finds its chain ID, the layer is already there: next layer;
//! 2. `prepare("extract-<random>-<chain ID>", parent = chain ID of the layer below)`;
//! 3. unpack the layer into [`Snapshotter::upper`] of that key (see [`crate::unpack`]), then
//!    [`crate::unpack::sync`];
//! 4. `commit(chain ID, key)`. If another puller committed the same chain ID first, commit
//!    answers [`Error::AlreadyExists`]: the caller treats that as success and removes its own
//!    active snapshot.
//!
//! Running a container: `prepare(container key, parent = chain ID of the top layer)`, then
//! mount what [`Snapshotter::mounts`] describes; on container removal, `remove(container key)`.
//! Removing an image removes its chain IDs from the top down, since [`Snapshotter::remove`]
//! refuses a snapshot that still has children.
//!
//! Snapshotters compute mounts as data ([`Mount`]) and never mount anything themselves:
//! whoever runs the container applies them, in the right mount namespace.
//!
//! # Layout
//! - this module: the [`Snapshotter`] trait, its vocabulary and errors, and [`Mount`];
//! - [`overlay`]: the overlayfs implementation ([`Overlay`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

pub mod overlay;

pub use overlay::Overlay;

/// A mount described as data: the snapshotter computes it, someone else (see
/// [`crate::sys`]) performs it. Like containerd's `mount.Mount`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mount {
    /// Filesystem type: `overlay` or `bind`.
    pub kind: String,
    /// Source: `overlay`, or the directory for a bind.
    pub source: String,
    /// Mount options (`lowerdir=…`, `upperdir=…`, `workdir=…`, `ro`, `rbind`, …).
    pub options: Vec<String>,
    /// When set, the paths in `options` are relative to this directory, and whoever mounts
    /// must do so from inside it (a child process that `chdir`s there first). That keeps the
    /// option string of an image with many layers within the kernel's one-page limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
}

/// What a snapshot is for; see the module doc for the words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Writable; can be committed.
    Active,
    /// Read-only view of a committed parent; cannot be committed.
    View,
    /// Read-only and immutable; the only kind that can be a parent.
    Committed,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Active => "active",
            Kind::View => "view",
            Kind::Committed => "committed",
        })
    }
}

/// What the snapshotter records about one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Info {
    /// The key (active, view) or name (committed) the snapshot is known by.
    pub key: String,
    /// The committed snapshot below this one, if any.
    pub parent: Option<String>,
    /// Active, view or committed.
    pub kind: Kind,
    /// The snapshotter's internal number for it (its directory name): short, so that the
    /// mount options of a deep chain stay short. Kept across commit.
    pub id: u64,
    /// When it was prepared (Unix seconds). Kept across commit.
    pub created: u64,
    /// Free-form labels given at prepare, kept across commit.
    pub labels: BTreeMap<String, String>,
}

/// Why a snapshot operation failed.
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum Error {
    /// No snapshot has this key.
    #[error("snapshot {key:?} not found")]
    NotFound {
        /// The key looked up.
        key: String,
    },
    /// The key (or the commit name) is taken. For a commit of a layer this means another
    /// puller got there first, which callers treat as success.
    #[error("snapshot {key:?} already exists")]
    AlreadyExists {
        /// The key or name that is taken.
        key: String,
    },
    /// A snapshot that is the parent of others cannot be removed.
    #[error("snapshot {key:?} is the parent of {children:?}: remove those first")]
    HasChildren {
        /// The snapshot asked to be removed.
        key: String,
        /// Keys of its children.
        children: Vec<String>,
    },
    /// The operation needs a snapshot of another kind (commit an active one, parent a
    /// committed one, unpack into an active one, mount an active one or a view).
    #[error("snapshot {key:?} is {actual}, but this needs a snapshot that is {expected}")]
    WrongKind {
        /// The snapshot.
        key: String,
        /// What it is.
        actual: Kind,
        /// What the operation needs.
        expected: Kind,
    },
    /// [`Snapshotter::commit_onto`] was asked for a parent other than the one the active
    /// snapshot was prepared on.
    #[error("snapshot {key:?} was prepared on {prepared:?}; it cannot be committed onto {requested:?}")]
    ParentMismatch {
        /// The active snapshot.
        key: String,
        /// The parent it was prepared on.
        prepared: Option<String>,
        /// The parent asked for.
        requested: Option<String>,
    },
    /// The key cannot name a snapshot.
    #[error("invalid snapshot key {key:?}: {reason}")]
    InvalidKey {
        /// The key given.
        key: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`create`, `rename`, `remove`, …).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The metadata file cannot be read or written as JSON.
    #[error("snapshot metadata {path}: {source}")]
    Metadata {
        /// The metadata file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The metadata contradicts itself (a parent that is not recorded, a parent cycle): it
    /// was edited by hand or damaged.
    #[error("snapshot metadata is inconsistent at {key:?}: {reason}")]
    Inconsistent {
        /// The snapshot where the inconsistency was found.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// Result of snapshot operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A store of snapshots; see the module doc for the words and the lifecycle.
///
/// Every method does blocking filesystem work (and takes a lock shared with other processes
/// using the same root): call it from `spawn_blocking` in async code.
pub trait Snapshotter: Send + Sync {
    /// The snapshot with this key, or `None`.
    fn stat(&self, key: &str) -> Result<Option<Info>>;

    /// Creates the active snapshot `key` on top of the committed `parent` (or empty) and
    /// returns how to mount it writable. Fails with [`Error::AlreadyExists`] if `key` is taken,
    /// [`Error::NotFound`] or [`Error::WrongKind`] if `parent` is missing or not committed.
    fn prepare(&self, key: &str, parent: Option<&str>, labels: BTreeMap<String, String>) -> Result<Vec<Mount>>;

    /// Creates the read-only view `key` of the committed `parent` (or empty) and returns how
    /// to mount it.
    fn view(&self, key: &str, parent: Option<&str>) -> Result<Vec<Mount>>;

    /// How to mount the active snapshot or view `key` (again).
    fn mounts(&self, key: &str) -> Result<Vec<Mount>>;

    /// Turns the active snapshot `key` into the committed snapshot `name`; `key` is gone
    /// afterwards. The caller must have synced what it wrote (see [`crate::unpack::sync`]).
    /// Fails with [`Error::AlreadyExists`] if `name` exists, leaving `key` in place.
    fn commit(&self, name: &str, key: &str) -> Result<()>;

    /// [`Snapshotter::commit`], giving the committed snapshot the parent `parent` at the same
    /// time. This lets a pull unpack its layers in parallel, each into an active snapshot
    /// prepared without a parent (a layer's upper directory does not depend on what is below
    /// it), and stack them in order as it commits them. The active snapshot must have been
    /// prepared without a parent or on this same one ([`Error::ParentMismatch`]), and `parent`
    /// must be committed.
    fn commit_onto(&self, name: &str, key: &str, parent: Option<&str>) -> Result<()>;

    /// Forgets the snapshot `key` and deletes its directory. Refuses with
    /// [`Error::HasChildren`] while other snapshots have it as parent. A directory that cannot
    /// be deleted now (still mounted) is left to [`Snapshotter::cleanup`].
    fn remove(&self, key: &str) -> Result<()>;

    /// Every snapshot, oldest first.
    fn list(&self) -> Result<Vec<Info>>;

    /// Disk space used by the snapshot's own directory (what it adds over its parent), in
    /// bytes of allocated blocks, hard links counted once: what `du` would say.
    fn usage(&self, key: &str) -> Result<u64>;

    /// The directory holding the active snapshot's own changes: where a layer is unpacked
    /// directly, without mounting anything. Only for active snapshots, so nothing writes into
    /// a snapshot others may build on.
    fn upper(&self, key: &str) -> Result<PathBuf>;

    /// Deletes directories that no recorded snapshot owns (left by a crash between creating a
    /// snapshot's directory and recording it, or by a removal that found it busy), returning
    /// what it deleted. Safe to run while other processes use the same root.
    fn cleanup(&self) -> Result<Vec<PathBuf>>;
}
