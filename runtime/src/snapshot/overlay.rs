//! The overlayfs snapshotter, after containerd's `plugins/snapshots/overlay`.
//!
//! # Layout
//! ```text
//! <root>/
//!   lock                 flock(2)ed for every change, by every process using this root
//!   metadata.json        { version, next_id, snapshots: { key → {id, kind, parent, created, labels} } }
//!   snapshots/
//!     <id>/fs            the snapshot's own changes: overlay upperdir while active, a lowerdir
//!                        of its children once committed
//!     <id>/work          overlay workdir (active snapshots only)
//!     new-<id>-<pid>     a snapshot being created; never recorded, so removed by cleanup
//! ```
//! Ids are small decimal numbers, never reused, so that the `lowerdir=` option of a deep
//! chain stays short (`/var/lib/berth/snapshots/snapshots/17/fs` rather than a chain ID).
//!
//! # Invariants
//! - **A directory exists before it is recorded.** Creation builds `new-…`, renames it to
//!   `<id>` and only then writes the metadata that names it. A crash in between leaves an
//!   unrecorded directory that [`Overlay::cleanup`] removes, never a record without its
//!   directory.
//! - **The metadata is replaced, never edited in place**: written to a temporary file, fsynced
//!   and renamed over the old one, so a reader (who takes no lock) sees the old or the new
//!   state, never half of one.
//! - **Every change holds the `lock` file's exclusive flock**, so several `berth-node`
//!   processes can share a root: each change re-reads the metadata under the lock.
//!
//! # Mounts
//! - no parent → a bind mount of the snapshot's own `fs` (`rw` if active, `ro` for a view);
//! - view of one parent → a read-only bind mount of the parent's `fs`;
//! - otherwise → `overlay` with `lowerdir=` the parents top-most first, plus `upperdir=` and
//!   `workdir=` if active (a view has only lower directories, which overlayfs mounts read-only).
//!
//! The kernel copies mount options into one page, and the VFS keeps 512 bytes of it for
//! itself (containerd draws the line at the same place). When the absolute option string
//! would not fit, the options name directories relative to `<root>/snapshots`
//! (`lowerdir=12/fs:11/fs…`) and the mount carries `cwd`, which whoever mounts must `chdir`
//! to first. That fits well over a hundred layers in one page.
//!
//! `index=off` is added when the kernel knows the option, as containerd does: with the
//! inode index on (a kernel build or module default), overlayfs records in each upper
//! directory which lower directories it was first mounted with and refuses other
//! combinations, which breaks sharing layers between containers and remounting after a
//! layer below was replaced. Off is the stable choice for rootful and nested use.

use super::{Error, Info, Kind, Mount, Result, Snapshotter};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Version of the metadata file format.
const METADATA_VERSION: u32 = 1;

/// The overlayfs snapshotter rooted at one directory. Cheap to share (`Arc`); it holds no
/// state beyond paths: every operation re-reads the metadata, since other processes may use
/// the same root.
#[derive(Debug)]
pub struct Overlay {
    /// `<root>/snapshots`, absolute.
    snapshots: PathBuf,
    /// `<root>/metadata.json`.
    metadata: PathBuf,
    /// `<root>/lock`.
    lock: PathBuf,
    /// The root itself, fsynced after the metadata is renamed.
    root: PathBuf,
    /// Options appended to every overlay mount (`index=off` when supported).
    extra_options: Vec<String>,
    /// Longest option string (joined with `,`) given with absolute paths.
    option_limit: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Metadata {
    version: u32,
    /// The id the next snapshot gets; ids are never reused.
    next_id: u64,
    snapshots: BTreeMap<String, Record>,
}

impl Default for Metadata {
    fn default() -> Self {
        Metadata {
            version: METADATA_VERSION,
            next_id: 1,
            snapshots: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    id: u64,
    kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parent: Option<String>,
    created: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
}

impl Record {
    fn info(&self, key: &str) -> Info {
        Info {
            key: key.to_owned(),
            parent: self.parent.clone(),
            kind: self.kind,
            id: self.id,
            created: self.created,
            labels: self.labels.clone(),
        }
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn validate_key(key: &str) -> Result<()> {
    let reason = if key.is_empty() {
        "empty"
    } else if key.len() > 4096 {
        "longer than 4096 bytes"
    } else if key.contains('\0') {
        "contains NUL"
    } else {
        return Ok(());
    };
    Err(Error::InvalidKey {
        key: key.to_owned(),
        reason,
    })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// fsyncs a directory, making the renames and creations in it durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("fsync", dir))
}

/// Removes a tree; a tree already gone is not an error.
fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

impl Overlay {
    /// Opens (creating if needed) the snapshotter rooted at `root`.
    ///
    /// The root must be on a filesystem overlayfs accepts as upper (ext4, xfs with ftype=1,
    /// btrfs; not overlayfs itself), and its absolute path must be UTF-8 without `,`, `:` or
    /// `\`, since it is spelled inside overlay mount options.
    pub fn new(root: &Path) -> Result<Overlay> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(io_err("create", root))?;
        let root = fs::canonicalize(root).map_err(io_err("resolve", root))?;
        match root.to_str() {
            Some(s) if !s.contains([',', ':', '\\']) => {}
            _ => {
                return Err(Error::Io {
                    op: "use as snapshot root",
                    path: root,
                    source: io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "the path must be UTF-8 without ',', ':' or '\\' to fit in overlay mount options",
                    ),
                })
            }
        }
        let snapshots = root.join("snapshots");
        match DirBuilder::new().mode(0o700).create(&snapshots) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(io_err("create", &snapshots)(e)),
            _ => {}
        }
        let mut extra_options = Vec::new();
        if Path::new("/sys/module/overlay/parameters/index").exists() {
            extra_options.push("index=off".to_owned());
        }
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|p| usize::try_from(p).ok())
            .unwrap_or(4096);
        Ok(Overlay {
            metadata: root.join("metadata.json"),
            lock: root.join("lock"),
            snapshots,
            root,
            extra_options,
            option_limit: page.saturating_sub(512),
        })
    }

    /// The (canonical) root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.snapshots.join(id.to_string())
    }

    /// Reads the metadata without the lock: it is only ever replaced by a rename, so this
    /// sees one complete state.
    fn load(&self) -> Result<Metadata> {
        let bytes = match fs::read(&self.metadata) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Metadata::default()),
            Err(e) => return Err(io_err("read", &self.metadata)(e)),
        };
        let meta: Metadata = serde_json::from_slice(&bytes).map_err(|source| Error::Metadata {
            path: self.metadata.clone(),
            source,
        })?;
        if meta.version != METADATA_VERSION {
            return Err(Error::Inconsistent {
                key: String::new(),
                reason: format!(
                    "{} has format version {}, this build reads {METADATA_VERSION}",
                    self.metadata.display(),
                    meta.version
                ),
            });
        }
        Ok(meta)
    }

    fn save(&self, meta: &Metadata) -> Result<()> {
        let tmp = self.root.join("metadata.json.tmp");
        let json = serde_json::to_vec_pretty(meta).map_err(|source| Error::Metadata {
            path: self.metadata.clone(),
            source,
        })?;
        let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
        f.write_all(&json)
            .and_then(|()| f.sync_all())
            .map_err(io_err("write", &tmp))?;
        drop(f);
        fs::rename(&tmp, &self.metadata).map_err(io_err("rename", &tmp))?;
        sync_dir(&self.root)
    }

    /// Runs `change` on the current metadata under the exclusive lock and saves the result if
    /// it changed. The lock is released when the file closes, also if this process dies.
    fn locked<T>(&self, change: impl FnOnce(&mut Metadata) -> Result<T>) -> Result<T> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&self.lock)
            .map_err(io_err("open", &self.lock))?;
        let _guard = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| io_err("flock", &self.lock)(io::Error::from(errno)))?;
        let before = self.load()?;
        let mut meta = before.clone();
        let out = change(&mut meta)?;
        if meta != before {
            self.save(&meta)?;
        }
        Ok(out)
    }

    /// Ids of `rec`'s parents, nearest first.
    fn parent_ids(meta: &Metadata, key: &str, rec: &Record) -> Result<Vec<u64>> {
        let mut ids = Vec::new();
        let mut next = rec.parent.as_deref();
        while let Some(parent) = next {
            let p = meta.snapshots.get(parent).ok_or_else(|| Error::Inconsistent {
                key: key.to_owned(),
                reason: format!("its ancestor {parent:?} is not recorded"),
            })?;
            ids.push(p.id);
            if ids.len() > meta.snapshots.len() {
                return Err(Error::Inconsistent {
                    key: key.to_owned(),
                    reason: "its parents form a cycle".into(),
                });
            }
            next = p.parent.as_deref();
        }
        Ok(ids)
    }

    fn mounts_of(&self, meta: &Metadata, key: &str, rec: &Record) -> Result<Vec<Mount>> {
        if rec.kind == Kind::Committed {
            return Err(Error::WrongKind {
                key: key.to_owned(),
                actual: rec.kind,
                expected: Kind::Active,
            });
        }
        let parents = Self::parent_ids(meta, key, rec)?;
        Ok(vec![self.mount_for(rec, &parents)])
    }

    fn mount_for(&self, rec: &Record, parents: &[u64]) -> Mount {
        let bind = |id: u64, mode: &str| Mount {
            kind: "bind".into(),
            source: self.dir(id).join("fs").to_string_lossy().into_owned(),
            options: vec![mode.into(), "rbind".into()],
            cwd: None,
        };
        match (rec.kind, parents) {
            (Kind::Active, []) => return bind(rec.id, "rw"),
            (_, []) => return bind(rec.id, "ro"),
            (Kind::View, [only]) => return bind(*only, "ro"),
            _ => {}
        }
        let options = |prefix: &str| {
            let lower: Vec<String> = parents.iter().map(|id| format!("{prefix}{id}/fs")).collect();
            let mut options = Vec::with_capacity(3 + self.extra_options.len());
            if rec.kind == Kind::Active {
                options.push(format!("workdir={prefix}{}/work", rec.id));
                options.push(format!("upperdir={prefix}{}/fs", rec.id));
            }
            options.push(format!("lowerdir={}", lower.join(":")));
            options.extend(self.extra_options.iter().cloned());
            options
        };
        // The root was checked to be UTF-8 in `new`.
        let absolute = options(&format!("{}/", self.snapshots.to_string_lossy()));
        let length = absolute.iter().map(|o| o.len() + 1).sum::<usize>().saturating_sub(1);
        let (options, cwd) = if length > self.option_limit {
            (options(""), Some(self.snapshots.clone()))
        } else {
            (absolute, None)
        };
        Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options,
            cwd,
        }
    }

    fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        validate_key(key)?;
        self.locked(|meta| {
            if meta.snapshots.contains_key(key) {
                return Err(Error::AlreadyExists { key: key.to_owned() });
            }
            if let Some(parent) = parent {
                let p = meta
                    .snapshots
                    .get(parent)
                    .ok_or_else(|| Error::NotFound { key: parent.to_owned() })?;
                if p.kind != Kind::Committed {
                    return Err(Error::WrongKind {
                        key: parent.to_owned(),
                        actual: p.kind,
                        expected: Kind::Committed,
                    });
                }
            }
            let id = meta.next_id.max(1);
            let dir = self.dir(id);
            self.make_dir(id, kind, &dir)?;
            let rec = Record {
                id,
                kind,
                parent: parent.map(str::to_owned),
                created: now(),
                labels,
            };
            meta.next_id = id + 1;
            meta.snapshots.insert(key.to_owned(), rec.clone());
            self.mounts_of(meta, key, &rec)
        })
    }

    /// Builds the snapshot directory under a temporary name and renames it into place.
    /// Called under the lock, so a leftover at either name is garbage from a crash.
    fn make_dir(&self, id: u64, kind: Kind, dir: &Path) -> Result<()> {
        let tmp = self.snapshots.join(format!("new-{id}-{}", std::process::id()));
        remove_tree(&tmp).map_err(io_err("remove", &tmp))?;
        let build = || -> Result<()> {
            DirBuilder::new()
                .mode(0o700)
                .create(&tmp)
                .map_err(io_err("create", &tmp))?;
            let fs_dir = tmp.join("fs");
            DirBuilder::new()
                .mode(0o755)
                .create(&fs_dir)
                .map_err(io_err("create", &fs_dir))?;
            if kind == Kind::Active {
                let work = tmp.join("work");
                DirBuilder::new()
                    .mode(0o711)
                    .create(&work)
                    .map_err(io_err("create", &work))?;
            }
            // A directory at the final name is not recorded (the id was never saved as used):
            // left by a crash after the rename below.
            remove_tree(dir).map_err(io_err("remove", dir))?;
            fs::rename(&tmp, dir).map_err(io_err("rename", &tmp))?;
            sync_dir(&self.snapshots)
        };
        build().inspect_err(|_| {
            let _ = remove_tree(&tmp);
        })
    }

    /// Commits `key` as `name`; `parent`, when given, is the parent the committed snapshot
    /// must have (set if the active one has none).
    fn commit_as(&self, name: &str, key: &str, parent: Option<Option<&str>>) -> Result<()> {
        validate_key(name)?;
        self.locked(|meta| {
            let rec = meta
                .snapshots
                .get(key)
                .ok_or_else(|| Error::NotFound { key: key.to_owned() })?;
            if rec.kind != Kind::Active {
                return Err(Error::WrongKind {
                    key: key.to_owned(),
                    actual: rec.kind,
                    expected: Kind::Active,
                });
            }
            if meta.snapshots.contains_key(name) {
                return Err(Error::AlreadyExists { key: name.to_owned() });
            }
            let parent = match (parent, rec.parent.as_deref()) {
                (None, prepared) => prepared.map(str::to_owned),
                (Some(requested), prepared) if prepared.is_none() || prepared == requested => {
                    requested.map(str::to_owned)
                }
                (Some(requested), prepared) => {
                    return Err(Error::ParentMismatch {
                        key: key.to_owned(),
                        prepared: prepared.map(str::to_owned),
                        requested: requested.map(str::to_owned),
                    })
                }
            };
            if let Some(p) = parent.as_deref() {
                let prec = meta
                    .snapshots
                    .get(p)
                    .ok_or_else(|| Error::NotFound { key: p.to_owned() })?;
                if prec.kind != Kind::Committed {
                    return Err(Error::WrongKind {
                        key: p.to_owned(),
                        actual: prec.kind,
                        expected: Kind::Committed,
                    });
                }
            }
            if let Some(mut rec) = meta.snapshots.remove(key) {
                rec.kind = Kind::Committed;
                rec.parent = parent;
                meta.snapshots.insert(name.to_owned(), rec);
            }
            Ok(())
        })
    }

    fn get(&self, key: &str) -> Result<(Metadata, Record)> {
        let meta = self.load()?;
        let rec = meta
            .snapshots
            .get(key)
            .cloned()
            .ok_or_else(|| Error::NotFound { key: key.to_owned() })?;
        Ok((meta, rec))
    }
}

impl Snapshotter for Overlay {
    fn stat(&self, key: &str) -> Result<Option<Info>> {
        Ok(self.load()?.snapshots.get(key).map(|rec| rec.info(key)))
    }

    fn prepare(&self, key: &str, parent: Option<&str>, labels: BTreeMap<String, String>) -> Result<Vec<Mount>> {
        self.create(Kind::Active, key, parent, labels)
    }

    fn view(&self, key: &str, parent: Option<&str>) -> Result<Vec<Mount>> {
        self.create(Kind::View, key, parent, BTreeMap::new())
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let (meta, rec) = self.get(key)?;
        self.mounts_of(&meta, key, &rec)
    }

    fn commit(&self, name: &str, key: &str) -> Result<()> {
        self.commit_as(name, key, None)
    }

    fn commit_onto(&self, name: &str, key: &str, parent: Option<&str>) -> Result<()> {
        self.commit_as(name, key, Some(parent))
    }

    fn remove(&self, key: &str) -> Result<()> {
        let id = self.locked(|meta| {
            let rec = meta
                .snapshots
                .get(key)
                .ok_or_else(|| Error::NotFound { key: key.to_owned() })?;
            let id = rec.id;
            let children: Vec<String> = meta
                .snapshots
                .iter()
                .filter(|(_, r)| r.parent.as_deref() == Some(key))
                .map(|(k, _)| k.clone())
                .collect();
            if !children.is_empty() {
                return Err(Error::HasChildren {
                    key: key.to_owned(),
                    children,
                });
            }
            meta.snapshots.remove(key);
            Ok(id)
        })?;
        // Forgotten first, deleted second: a failure here (a mount still on it) leaves an
        // unrecorded directory for cleanup, never a record without a directory.
        let dir = self.dir(id);
        if let Err(e) = remove_tree(&dir) {
            tracing::warn!(path = %dir.display(), error = %e, "removing snapshot directory failed; cleanup will retry");
        }
        Ok(())
    }

    fn list(&self) -> Result<Vec<Info>> {
        let meta = self.load()?;
        let mut all: Vec<Info> = meta.snapshots.iter().map(|(k, r)| r.info(k)).collect();
        all.sort_by_key(|i| i.id);
        Ok(all)
    }

    fn usage(&self, key: &str) -> Result<u64> {
        let (_, rec) = self.get(key)?;
        disk_usage(&self.dir(rec.id).join("fs"))
    }

    fn upper(&self, key: &str) -> Result<PathBuf> {
        let (_, rec) = self.get(key)?;
        if rec.kind != Kind::Active {
            return Err(Error::WrongKind {
                key: key.to_owned(),
                actual: rec.kind,
                expected: Kind::Active,
            });
        }
        Ok(self.dir(rec.id).join("fs"))
    }

    fn cleanup(&self) -> Result<Vec<PathBuf>> {
        // Under the lock: a `new-…` directory only exists unrecorded while its creator holds
        // the lock, so any seen here is left from a crash.
        self.locked(|meta| {
            let owned: HashSet<String> = meta.snapshots.values().map(|r| r.id.to_string()).collect();
            let mut removed = Vec::new();
            let entries = fs::read_dir(&self.snapshots).map_err(io_err("read", &self.snapshots))?;
            for entry in entries {
                let entry = entry.map_err(io_err("read", &self.snapshots))?;
                if entry.file_name().to_str().is_some_and(|name| owned.contains(name)) {
                    continue;
                }
                let path = entry.path();
                match remove_tree(&path) {
                    Ok(()) => removed.push(path),
                    Err(e) => tracing::warn!(path = %path.display(), error = %e, "cleanup could not remove"),
                }
            }
            Ok(removed)
        })
    }
}

/// Allocated bytes under `dir`, each inode counted once.
fn disk_usage(dir: &Path) -> Result<u64> {
    let top = fs::symlink_metadata(dir).map_err(io_err("stat", dir))?;
    let mut total = top.blocks() * 512;
    let mut seen = HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).map_err(io_err("read", &d))? {
            let entry = entry.map_err(io_err("read", &d))?;
            let m = entry.metadata().map_err(io_err("stat", &entry.path()))?;
            if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
                continue;
            }
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unpack::test_layers::{get_xattr, root_or_skip, tar, E};
    use std::os::unix::fs::FileTypeExt;
    use std::process::Command;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Commits `n` empty layers `l1…ln`, each on the one before.
    fn chain(o: &Overlay, n: usize) {
        for i in 1..=n {
            let parent = (i > 1).then(|| format!("l{}", i - 1));
            o.prepare(&format!("tmp{i}"), parent.as_deref(), BTreeMap::new())
                .unwrap();
            o.commit(&format!("l{i}"), &format!("tmp{i}")).unwrap();
        }
    }

    fn snap(o: &Overlay, id: u64, sub: &str) -> String {
        format!("{}/{id}/{sub}", o.snapshots.display())
    }

    #[test]
    fn a_chain_of_three_mounts_as_overlay_top_layer_first() {
        let dir = tempfile::tempdir().unwrap();
        let o = Overlay::new(&dir.path().join("root")).unwrap();
        let extra = o.extra_options.clone();

        let m = o.prepare("tmp1", None, BTreeMap::new()).unwrap();
        assert_eq!(
            m,
            vec![Mount {
                kind: "bind".into(),
                source: snap(&o, 1, "fs"),
                options: vec!["rw".into(), "rbind".into()],
                cwd: None
            }]
        );
        assert_eq!(o.upper("tmp1").unwrap(), o.snapshots.join("1/fs"));
        assert!(o.upper("tmp1").unwrap().is_dir());
        o.commit("l1", "tmp1").unwrap();
        assert!(o.stat("tmp1").unwrap().is_none(), "the active key is gone after commit");
        let l1 = o.stat("l1").unwrap().unwrap();
        assert_eq!((l1.kind, l1.id, l1.parent.as_deref()), (Kind::Committed, 1, None));

        let m = o.prepare("tmp2", Some("l1"), BTreeMap::new()).unwrap();
        let mut expected = vec![
            format!("workdir={}", snap(&o, 2, "work")),
            format!("upperdir={}", snap(&o, 2, "fs")),
            format!("lowerdir={}", snap(&o, 1, "fs")),
        ];
        expected.extend(extra.iter().cloned());
        assert_eq!(
            m,
            vec![Mount {
                kind: "overlay".into(),
                source: "overlay".into(),
                options: expected,
                cwd: None
            }]
        );
        o.commit("l2", "tmp2").unwrap();
        o.prepare("tmp3", Some("l2"), BTreeMap::new()).unwrap();
        o.commit("l3", "tmp3").unwrap();

        let m = o.prepare("ctr", Some("l3"), labels(&[("app", "web")])).unwrap();
        let mut expected = vec![
            format!("workdir={}", snap(&o, 4, "work")),
            format!("upperdir={}", snap(&o, 4, "fs")),
            format!(
                "lowerdir={}:{}:{}",
                snap(&o, 3, "fs"),
                snap(&o, 2, "fs"),
                snap(&o, 1, "fs")
            ),
        ];
        expected.extend(extra.iter().cloned());
        assert_eq!(m[0].options, expected);
        assert_eq!(o.mounts("ctr").unwrap(), m, "mounts() repeats what prepare() said");
        let ctr = o.stat("ctr").unwrap().unwrap();
        assert_eq!(ctr.labels, labels(&[("app", "web")]));
        assert_eq!((ctr.kind, ctr.parent.as_deref()), (Kind::Active, Some("l3")));

        // Views: one parent is a read-only bind; several, an overlay with lower dirs only.
        let v = o.view("v1", Some("l1")).unwrap();
        assert_eq!(v[0].kind, "bind");
        assert_eq!(v[0].source, snap(&o, 1, "fs"));
        assert_eq!(v[0].options, vec!["ro".to_string(), "rbind".to_string()]);
        let v = o.view("v3", Some("l3")).unwrap();
        let mut expected = vec![format!(
            "lowerdir={}:{}:{}",
            snap(&o, 3, "fs"),
            snap(&o, 2, "fs"),
            snap(&o, 1, "fs")
        )];
        expected.extend(extra.iter().cloned());
        assert_eq!(v[0].options, expected);
        let v0 = o.view("v0", None).unwrap();
        assert_eq!((v0[0].kind.as_str(), v0[0].options[0].as_str()), ("bind", "ro"));

        // Misuse.
        assert!(matches!(
            o.mounts("l3"),
            Err(Error::WrongKind {
                actual: Kind::Committed,
                ..
            })
        ));
        assert!(matches!(o.upper("l3"), Err(Error::WrongKind { .. })));
        assert!(matches!(
            o.upper("v3"),
            Err(Error::WrongKind { actual: Kind::View, .. })
        ));
        assert!(matches!(o.commit("x", "v3"), Err(Error::WrongKind { .. })));
        assert!(matches!(
            o.prepare("x", Some("ctr"), BTreeMap::new()),
            Err(Error::WrongKind {
                actual: Kind::Active,
                expected: Kind::Committed,
                ..
            })
        ));
        assert!(matches!(
            o.prepare("ctr", None, BTreeMap::new()),
            Err(Error::AlreadyExists { .. })
        ));
        assert!(matches!(o.prepare("x", Some("nope"), BTreeMap::new()), Err(Error::NotFound { key }) if key == "nope"));
        assert!(matches!(
            o.prepare("", None, BTreeMap::new()),
            Err(Error::InvalidKey { .. })
        ));
        assert!(matches!(o.mounts("nope"), Err(Error::NotFound { .. })));
        // Committing onto a taken name leaves the active snapshot for the caller to remove.
        assert!(matches!(o.commit("l3", "ctr"), Err(Error::AlreadyExists { key }) if key == "l3"));
        assert_eq!(o.stat("ctr").unwrap().unwrap().kind, Kind::Active);
        o.remove("ctr").unwrap();
        assert!(!o.snapshots.join("4").exists());
    }

    #[test]
    fn commit_onto_stacks_layers_unpacked_in_parallel() {
        let dir = tempfile::tempdir().unwrap();
        let o = Overlay::new(dir.path()).unwrap();
        o.prepare("x1", None, BTreeMap::new()).unwrap();
        o.prepare("x2", None, BTreeMap::new()).unwrap();
        assert!(matches!(o.commit_onto("l2", "x2", Some("l1")), Err(Error::NotFound { key }) if key == "l1"));
        o.commit_onto("l1", "x1", None).unwrap();
        o.commit_onto("l2", "x2", Some("l1")).unwrap();
        assert_eq!(o.stat("l2").unwrap().unwrap().parent.as_deref(), Some("l1"));
        let m = o.prepare("ctr", Some("l2"), BTreeMap::new()).unwrap();
        assert!(m[0]
            .options
            .contains(&format!("lowerdir={}:{}", snap(&o, 2, "fs"), snap(&o, 1, "fs"))));

        o.prepare("y", Some("l1"), BTreeMap::new()).unwrap();
        assert!(matches!(
            o.commit_onto("l3", "y", Some("l2")),
            Err(Error::ParentMismatch { .. })
        ));
        o.commit_onto("l3", "y", Some("l1")).unwrap();
    }

    #[test]
    fn remove_refuses_a_parent_and_deletes_directories() {
        let dir = tempfile::tempdir().unwrap();
        let o = Overlay::new(dir.path()).unwrap();
        chain(&o, 2);
        match o.remove("l1") {
            Err(Error::HasChildren { key, children }) => {
                assert_eq!(key, "l1");
                assert_eq!(children, vec!["l2".to_string()]);
            }
            other => panic!("expected HasChildren, got {other:?}"),
        }
        o.prepare("a", Some("l2"), BTreeMap::new()).unwrap();
        let upper = o.upper("a").unwrap();
        fs::write(upper.join("f"), b"data").unwrap();
        assert!(matches!(o.remove("l2"), Err(Error::HasChildren { .. })));
        o.remove("a").unwrap();
        assert!(
            !upper.parent().unwrap().exists(),
            "the active snapshot's directory is deleted"
        );
        o.remove("l2").unwrap();
        o.remove("l1").unwrap();
        assert!(matches!(o.remove("l1"), Err(Error::NotFound { .. })));
        assert!(o.list().unwrap().is_empty());
        assert_eq!(fs::read_dir(&o.snapshots).unwrap().count(), 0, "nothing left behind");
    }

    #[test]
    fn list_and_usage() {
        let dir = tempfile::tempdir().unwrap();
        let o = Overlay::new(dir.path()).unwrap();
        chain(&o, 2);
        o.prepare("ctr", Some("l2"), labels(&[("k", "v")])).unwrap();
        let keys: Vec<(String, u64)> = o.list().unwrap().into_iter().map(|i| (i.key, i.id)).collect();
        assert_eq!(keys, vec![("l1".into(), 1), ("l2".into(), 2), ("ctr".into(), 3)]);

        let empty = o.usage("ctr").unwrap();
        let upper = o.upper("ctr").unwrap();
        fs::create_dir(upper.join("d")).unwrap();
        fs::write(upper.join("d/big"), vec![7u8; 100_000]).unwrap();
        fs::hard_link(upper.join("d/big"), upper.join("again")).unwrap();
        let used = o.usage("ctr").unwrap();
        assert!(used >= empty + 100_000, "{used} bytes");
        assert!(used < empty + 200_000, "a hard link is counted once: {used} bytes");
        assert!(matches!(o.usage("nope"), Err(Error::NotFound { .. })));
    }

    #[test]
    fn metadata_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let o = Overlay::new(dir.path()).unwrap();
            chain(&o, 2);
            o.prepare("ctr", Some("l2"), labels(&[("a", "b")])).unwrap();
        }
        let o = Overlay::new(dir.path()).unwrap();
        let ctr = o.stat("ctr").unwrap().unwrap();
        assert_eq!((ctr.kind, ctr.id, ctr.parent.as_deref()), (Kind::Active, 3, Some("l2")));
        assert_eq!(ctr.labels, labels(&[("a", "b")]));
        assert!(ctr.created > 1_600_000_000);
        assert!(o.mounts("ctr").unwrap()[0]
            .options
            .iter()
            .any(|opt| opt.starts_with("lowerdir=")));
        // Ids keep counting: never reused, even after removals.
        o.remove("ctr").unwrap();
        o.prepare("next", Some("l2"), BTreeMap::new()).unwrap();
        assert_eq!(o.stat("next").unwrap().unwrap().id, 4);
    }

    #[test]
    fn cleanup_removes_only_unrecorded_directories() {
        let dir = tempfile::tempdir().unwrap();
        let o = Overlay::new(dir.path()).unwrap();
        chain(&o, 1);
        o.prepare("ctr", Some("l1"), BTreeMap::new()).unwrap();
        // What a crash leaves: a half-built snapshot, and one renamed but never recorded.
        fs::create_dir_all(o.snapshots.join("new-3-999/fs")).unwrap();
        fs::create_dir_all(o.snapshots.join("3/fs")).unwrap();
        let mut removed = o.cleanup().unwrap();
        removed.sort();
        assert_eq!(removed, vec![o.snapshots.join("3"), o.snapshots.join("new-3-999")]);
        assert!(o.snapshots.join("1/fs").is_dir() && o.snapshots.join("2/work").is_dir());
        assert!(o.cleanup().unwrap().is_empty());
        // A stale directory at the next id does not stop the next prepare either.
        fs::create_dir_all(o.snapshots.join("3/fs/junk")).unwrap();
        o.prepare("after", None, BTreeMap::new()).unwrap();
        assert_eq!(fs::read_dir(o.upper("after").unwrap()).unwrap().count(), 0);
    }

    #[test]
    fn processes_sharing_a_root_get_distinct_ids() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let threads: Vec<_> = (0..6)
            .map(|t| {
                let root = root.clone();
                // A separate Overlay per thread: separate lock-file descriptions, as separate
                // processes would have.
                std::thread::spawn(move || {
                    let o = Overlay::new(&root).unwrap();
                    for i in 0..10 {
                        o.prepare(&format!("t{t}-{i}"), None, BTreeMap::new()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let o = Overlay::new(&root).unwrap();
        let infos = o.list().unwrap();
        assert_eq!(infos.len(), 60, "no update lost");
        let ids: HashSet<u64> = infos.iter().map(|i| i.id).collect();
        assert_eq!(ids.len(), 60);
        assert_eq!(fs::read_dir(&o.snapshots).unwrap().count(), 60);
    }

    #[test]
    fn a_130_layer_chain_gets_relative_options_within_a_page() {
        let dir = tempfile::tempdir().unwrap();
        let o = Overlay::new(dir.path()).unwrap();
        chain(&o, 130);
        let m = o.prepare("ctr", Some("l130"), BTreeMap::new()).unwrap();
        let m = &m[0];
        assert_eq!(m.cwd.as_deref(), Some(o.snapshots.as_path()));
        let lower: Vec<String> = (1..=130).rev().map(|i| format!("{i}/fs")).collect();
        assert!(
            m.options.contains(&format!("lowerdir={}", lower.join(":"))),
            "{:?}",
            m.options
        );
        assert!(m.options.contains(&"upperdir=131/fs".to_string()));
        assert!(m.options.contains(&"workdir=131/work".to_string()));
        let joined = m.options.join(",");
        assert!(joined.len() < 4096, "{} bytes", joined.len());
        assert!(joined.len() <= o.option_limit);
        // The absolute form really would not have fitted.
        assert!(130 * (o.snapshots.as_os_str().len() + 5) > o.option_limit);
        let v = o.view("v", Some("l130")).unwrap();
        assert_eq!(v[0].cwd.as_deref(), Some(o.snapshots.as_path()));
        assert!(!v[0].options.iter().any(|opt| opt.starts_with("upperdir")));
    }

    // ---- root: real overlay mounts of what the snapshotter describes ----

    /// Unmounts on drop, so a failed assertion leaves no mount behind.
    struct Mounted(PathBuf);

    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }

    /// Mounts an overlay `Mount` the way a mounter that honours `cwd` does.
    fn mount(m: &Mount, target: &Path) -> Mounted {
        assert_eq!(m.kind, "overlay", "{m:?}");
        fs::create_dir_all(target).unwrap();
        let mut cmd = Command::new("mount");
        cmd.args(["-t", "overlay", "overlay", "-o"])
            .arg(m.options.join(","))
            .arg(target);
        if let Some(cwd) = &m.cwd {
            cmd.current_dir(cwd);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Mounted(target.to_owned())
    }

    fn layer(o: &Overlay, name: &str, parent: Option<&str>, entries: &[E<'_>]) {
        let key = format!("extract-{name}");
        o.prepare(&key, parent, BTreeMap::new()).unwrap();
        let upper = o.upper(&key).unwrap();
        crate::unpack::apply(&tar(entries)[..], &upper).unwrap();
        crate::unpack::sync(&upper).unwrap();
        o.commit(name, &key).unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn root_mounts_three_layers_with_a_whiteout_and_an_opaque_directory() {
        if !root_or_skip() || !berth_conformance::peers::require("mount") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let o = Overlay::new(&dir.path().join("root")).unwrap();
        layer(
            &o,
            "l1",
            None,
            &[
                E::Dir("etc/", 0o755),
                E::File("etc/a", b"a1", 0o644),
                E::File("etc/b", b"b1", 0o644),
                E::Dir("d/", 0o755),
                E::File("d/old", b"old", 0o644),
                E::File("keep", b"k", 0o644),
            ],
        );
        layer(
            &o,
            "l2",
            Some("l1"),
            &[
                E::Dir("etc/", 0o755),
                E::File("etc/.wh.a", b"", 0o644),
                E::File("etc/b", b"b2", 0o644),
                E::Dir("d/", 0o755),
                E::File("d/.wh..wh..opq", b"", 0o644),
                E::File("d/new", b"new", 0o644),
            ],
        );
        layer(
            &o,
            "l3",
            Some("l2"),
            &[E::File("top", b"t", 0o644), E::File("etc/c", b"c3", 0o644)],
        );

        let m = o.prepare("ctr", Some("l3"), BTreeMap::new()).unwrap();
        let merged = dir.path().join("merged");
        let guard = mount(&m[0], &merged);
        assert_eq!(names(&merged.join("etc")), ["b", "c"], "etc/a whited out");
        assert_eq!(fs::read(merged.join("etc/b")).unwrap(), b"b2", "upper layer wins");
        assert_eq!(names(&merged.join("d")), ["new"], "opaque d hides d/old");
        assert_eq!(fs::read(merged.join("keep")).unwrap(), b"k");
        assert_eq!(fs::read(merged.join("top")).unwrap(), b"t");
        // Writes land in the active snapshot's upper directory; deletions become whiteouts.
        fs::write(merged.join("etc/written"), b"w").unwrap();
        fs::remove_file(merged.join("keep")).unwrap();
        let upper = o.upper("ctr").unwrap();
        assert_eq!(fs::read(upper.join("etc/written")).unwrap(), b"w");
        assert!(fs::symlink_metadata(upper.join("keep"))
            .unwrap()
            .file_type()
            .is_char_device());
        drop(guard);

        // A view of several layers: an overlay without upper, read-only.
        let v = o.view("v", Some("l3")).unwrap();
        let view = dir.path().join("view");
        let guard = mount(&v[0], &view);
        assert_eq!(names(&view), ["d", "etc", "keep", "top"]);
        assert_eq!(names(&view.join("d")), ["new"]);
        let err = fs::write(view.join("x"), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        drop(guard);
        assert_eq!(
            get_xattr(&o.snapshots.join("2/fs/d"), "trusted.overlay.opaque").as_deref(),
            Some(&b"y"[..])
        );
    }

    #[test]
    fn root_mounts_a_130_layer_chain_from_its_cwd() {
        if !root_or_skip() || !berth_conformance::peers::require("mount") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let o = Overlay::new(&dir.path().join("root")).unwrap();
        for i in 1..=130 {
            let parent = (i > 1).then(|| format!("l{}", i - 1));
            let file = format!("f{i}");
            let content = i.to_string();
            let mut entries = vec![E::File(&file, content.as_bytes(), 0o644)];
            if i == 1 {
                entries.push(E::File("base", b"base", 0o644));
                entries.push(E::File("gone", b"gone", 0o644));
            }
            if i == 65 {
                entries.push(E::File(".wh.gone", b"", 0o644));
            }
            layer(&o, &format!("l{i}"), parent.as_deref(), &entries);
        }
        let m = o.prepare("ctr", Some("l130"), BTreeMap::new()).unwrap();
        assert!(m[0].cwd.is_some(), "a 130-layer chain needs relative options");
        let merged = dir.path().join("merged");
        let _guard = mount(&m[0], &merged);
        let all = names(&merged);
        assert_eq!(all.iter().filter(|n| n.starts_with('f')).count(), 130);
        assert!(
            all.contains(&"base".to_string()) && !all.contains(&"gone".to_string()),
            "{all:?}"
        );
        assert_eq!(fs::read(merged.join("f1")).unwrap(), b"1");
        assert_eq!(fs::read(merged.join("f130")).unwrap(), b"130");
    }
}
