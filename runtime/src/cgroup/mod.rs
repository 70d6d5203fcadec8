//! cgroup managers: put a container's processes in one cgroup, apply the spec's limits, find
//! and kill what is left, and remove the cgroup.
//!
//! Two implementations behind [`CgroupManager`]: [`V1`] (one directory per controller
//! hierarchy, `<mount>/<cgroups_path>`) and [`V2`] (one directory in the unified hierarchy).
//! Which one applies is decided by [`detect`] from a mountinfo text and a root (normally
//! `/proc/self/mountinfo` and `/sys/fs/cgroup`); both are parameters so that the tests run the
//! managers on a temporary directory that merely looks like a cgroup filesystem. A *hybrid*
//! host (v1 controllers plus an empty unified hierarchy at `<root>/unified`, as systemd sets up
//! in hybrid mode) is managed through v1: that is where the controllers are.
//!
//! Lifecycle: [`CgroupManager::create`] → [`CgroupManager::apply`] → [`CgroupManager::add_task`]
//! (the container's first process, before it runs anything; its children inherit the cgroup)
//! → … → [`CgroupManager::kill_all`] → [`CgroupManager::remove`].

pub mod devices;
mod fs;
mod v1;
mod v2;

pub use v1::V1;
pub use v2::V2;

use crate::spec::Resources;
use nix::sys::signal::Signal;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// What went wrong, with the file or path concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A cgroup file or directory operation failed.
    #[error("cgroup: {op} {}: {source}", path.display())]
    Io {
        /// What was being done (`write`, `mkdir`, …).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// No cgroup filesystem is mounted under the root.
    #[error("cgroup: no cgroup hierarchy is mounted under {}", .0.display())]
    NotMounted(PathBuf),
    /// The spec's `cgroupsPath` is not usable.
    #[error("cgroup: cgroupsPath {path:?} {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The spec limits a resource whose controller this host does not offer.
    #[error("cgroup: the spec sets {what}, but the {controller} controller is not available")]
    MissingController {
        /// The controller (`memory`, `pids`, …).
        controller: &'static str,
        /// The limit asked for.
        what: &'static str,
    },
    /// A limit that cannot be expressed (e.g. swap below memory).
    #[error("cgroup: invalid limit: {0}")]
    InvalidLimit(String),
    /// The cgroup still had tasks when the removal gave up.
    #[error("cgroup: {} still busy after {waited_ms} ms", path.display())]
    Busy {
        /// The directory that would not go.
        path: PathBuf,
        /// How long removal retried.
        waited_ms: u64,
    },
}

/// Result of cgroup operations.
pub type Result<T> = std::result::Result<T, Error>;

/// The cgroup version of a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Controllers mounted one hierarchy each, under the root.
    V1,
    /// v1 controllers plus a unified (v2) hierarchy without controllers under the root.
    Hybrid,
    /// One unified hierarchy mounted at the root.
    V2,
}

/// One v1 hierarchy: the controllers mounted together and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Controllers (`cpu`, `cpuacct`) or a named hierarchy (`name=systemd`).
    pub controllers: Vec<String>,
    /// Its mount point (`/sys/fs/cgroup/cpu,cpuacct`).
    pub mount: PathBuf,
}

/// The cgroup filesystems of a host, as [`detect`] finds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// v1, hybrid or v2.
    pub version: Version,
    /// v1 hierarchies (empty on v2).
    pub hierarchies: Vec<Hierarchy>,
    /// The unified hierarchy's mount point (the root on v2, `<root>/unified` on hybrid).
    pub unified: Option<PathBuf>,
}

/// A directory of this container's cgroup in one hierarchy, as
/// [`CgroupManager::dirs`] lists them (to bind them into the container).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupDir {
    /// The hierarchy's mount point name (`memory`, `cpu,cpuacct`, `systemd`); empty on v2.
    pub name: String,
    /// The cgroup's directory on the host.
    pub path: PathBuf,
}

/// One container's cgroup, in whichever version the host has.
pub trait CgroupManager: fmt::Debug + Send + Sync {
    /// Creates the cgroup's directories (and, on v2, enables the controllers above it).
    fn create(&self) -> Result<()>;
    /// Moves process `pid` (as seen from this process's pid namespace) into the cgroup.
    fn add_task(&self, pid: i32) -> Result<()>;
    /// Writes the spec's limits.
    fn apply(&self, resources: &Resources) -> Result<()>;
    /// The processes in the cgroup (none if it does not exist).
    fn pids(&self) -> Result<Vec<i32>>;
    /// Whether the kernel's OOM killer has killed a process of this cgroup.
    fn oom_killed(&self) -> Result<bool>;
    /// Sends `signal` to every process of the cgroup, freezing it first (when the host can)
    /// so that none forks away from the signal. For `SIGKILL`, waits until the cgroup is empty.
    fn kill_all(&self, signal: Signal) -> Result<()>;
    /// Removes the cgroup's directories, retrying while the last tasks finish exiting
    /// (`EBUSY`). Already gone is success.
    fn remove(&self) -> Result<()>;
    /// The cgroup's directory in each hierarchy.
    fn dirs(&self) -> Vec<CgroupDir>;
    /// The host's cgroup version.
    fn version(&self) -> Version;
}

/// A manager for the cgroup `cgroups_path` (the spec's `linux.cgroupsPath`: relative to each
/// v1 hierarchy's mount, or to the v2 root; a leading `/` is allowed and means the same).
pub fn manager_for(cgroups_path: &str, root: &Path, mountinfo: &str) -> Result<Box<dyn CgroupManager>> {
    let rel = relative_path(cgroups_path)?;
    let layout = detect(mountinfo, root)?;
    Ok(match layout.version {
        Version::V2 => Box::new(V2::new(root, &rel)),
        Version::V1 | Version::Hybrid => Box::new(V1::new(&layout.hierarchies, &rel)),
    })
}

fn relative_path(p: &str) -> Result<PathBuf> {
    let invalid = |reason| Error::InvalidPath {
        path: p.to_string(),
        reason,
    };
    if p.contains(':') {
        return Err(invalid(
            "is systemd-style (slice:prefix:name), which berth does not support",
        ));
    }
    let mut out = PathBuf::new();
    for c in Path::new(p).components() {
        match c {
            std::path::Component::Normal(n) => out.push(n),
            std::path::Component::RootDir | std::path::Component::CurDir => {}
            _ => return Err(invalid("must not contain `..`")),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(invalid("names no cgroup below the root"));
    }
    Ok(out)
}

/// v1 controller names, to tell them from other superblock options (`rw`, `nsdelegate`, …).
const V1_CONTROLLERS: &[&str] = &[
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
];

/// Finds the cgroup filesystems mounted under `root` in a `/proc/<pid>/mountinfo` text.
///
/// A `cgroup2` mount at `root` itself is v2; `cgroup` mounts below `root` are v1, or hybrid
/// when a `cgroup2` mount sits below `root` as well. Mounts elsewhere (a container's
/// `/sys/fs/cgroup` under some rootfs) are ignored; the first mount of a point wins.
pub fn detect(mountinfo: &str, root: &Path) -> Result<Layout> {
    let mut hierarchies: Vec<Hierarchy> = Vec::new();
    let mut unified = None;
    let mut v2_at_root = false;
    for line in mountinfo.lines() {
        let Some(m) = parse_mountinfo_line(line) else { continue };
        if !m.mount_point.starts_with(root) {
            continue;
        }
        match m.fstype.as_str() {
            "cgroup2" if m.mount_point == root => v2_at_root = true,
            "cgroup2" if unified.is_none() => unified = Some(m.mount_point),
            "cgroup" if m.mount_point != root => {
                if hierarchies.iter().any(|h| h.mount == m.mount_point) {
                    continue;
                }
                let controllers: Vec<String> = m
                    .super_options
                    .split(',')
                    .filter(|o| V1_CONTROLLERS.contains(o) || o.starts_with("name="))
                    .map(str::to_string)
                    .collect();
                if !controllers.is_empty() {
                    hierarchies.push(Hierarchy {
                        controllers,
                        mount: m.mount_point,
                    });
                }
            }
            _ => {}
        }
    }
    if v2_at_root {
        return Ok(Layout {
            version: Version::V2,
            hierarchies: Vec::new(),
            unified: Some(root.to_path_buf()),
        });
    }
    if hierarchies.is_empty() {
        return Err(Error::NotMounted(root.to_path_buf()));
    }
    Ok(Layout {
        version: if unified.is_some() {
            Version::Hybrid
        } else {
            Version::V1
        },
        hierarchies,
        unified,
    })
}

struct MountLine {
    mount_point: PathBuf,
    fstype: String,
    super_options: String,
}

/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`
fn parse_mountinfo_line(line: &str) -> Option<MountLine> {
    let (left, right) = line.split_once(" - ")?;
    let mount_point = left.split(' ').nth(4)?;
    let mut r = right.split(' ');
    let fstype = r.next()?.to_string();
    let _source = r.next()?;
    let super_options = r.next().unwrap_or("").to_string();
    Some(MountLine {
        mount_point: PathBuf::from(unescape_octal(mount_point)),
        fstype,
        super_options,
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\040`-style octal.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = std::str::from_utf8(&b[i + 1..i + 4]).ok();
            if let Some(v) = oct.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
pub(crate) mod tests;
