//! The node's one error type for its top-level operations (pull, images, containers). The
//! CLI prints it as one line and exits 125, as docker does for its own failures.

use berth_oci::Digest;
use std::path::PathBuf;

/// Result alias for this crate's top-level operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, with what to do where there is something to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Input the user gave that cannot work.
    #[error("{0}")]
    Usage(String),
    /// No such image or container.
    #[error("{0}")]
    NotFound(String),
    /// Talking to the registry failed.
    #[error(transparent)]
    Registry(#[from] berth_client::Error),
    /// The content store failed.
    #[error(transparent)]
    Content(#[from] crate::content::Error),
    /// The snapshotter failed.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::Error),
    /// A layer could not be unpacked (refused, corrupt, or the disk failed).
    #[error("layer {layer}: {source}")]
    Unpack {
        /// The layer's (compressed) digest.
        layer: Digest,
        /// The cause.
        source: crate::unpack::Error,
    },
    /// An image is not what its manifest or config says.
    #[error("{0}")]
    Image(String),
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Starting or controlling a container failed.
    #[error("{0}")]
    Runtime(String),
}

impl Error {
    /// An I/O error at `path`, for `map_err`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
