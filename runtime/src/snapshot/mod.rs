//! Snapshots (being written; the `Mount` type below is the agreed contract).

use std::path::PathBuf;

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
