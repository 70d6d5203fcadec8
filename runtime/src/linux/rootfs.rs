//! The container's filesystem view: everything between "new mount namespace" and "pivoted
//! into the rootfs with the spec's mounts, devices, masked and read-only paths in place".
//!
//! All of it goes through [`Syscall`], so the order and shape of the calls are unit-tested
//! with [`crate::sys::Recording`]; the only direct effects are creating mount points (dirs,
//! empty files) inside the rootfs, always through [`secure_join`] so that no symlink of the
//! image leads a mount outside the rootfs.

use super::{sys_err, Error};
use crate::cgroup::{CgroupDir, Version};
use crate::spec::{Device, Mount, Spec};
use crate::sys::{create_dir_all, create_file, secure_join, MountOptions, Syscall};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Per-mount flags carried over when a bind is remounted (a remount replaces them all, and
/// dropping `nosuid`/`nodev`/`noexec` from, say, a read-only `/proc/sys` would weaken it).
const KEPT_ON_REMOUNT: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC)
    .union(MsFlags::MS_NOATIME)
    .union(MsFlags::MS_NODIRATIME)
    .union(MsFlags::MS_RELATIME);

/// The devices every container gets (runtime-spec "Default Devices"), unless the spec lists
/// the same path: `(path, major, minor)`, all character devices, mode 0666, owned by root.
const DEFAULT_DEVICES: &[(&str, i64, i64)] = &[
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

/// What the cgroup mount inside the container binds (the container's own cgroup directories).
#[derive(Debug, Clone, Default)]
pub struct CgroupView {
    /// The host's cgroup version (`None`: no cgroup, a `cgroup` mount is then an error).
    pub version: Option<Version>,
    /// The container's cgroup directory in each hierarchy.
    pub dirs: Vec<CgroupDir>,
}

/// In a fresh mount namespace: sets the propagation of `/`, makes `rootfs` a mount point,
/// performs the spec's mounts in order, creates devices and the `/dev` symlinks, binds the
/// console (when `console` names the terminal), then pivots into `rootfs` and drops the old
/// root. Afterwards `/` is the container's root.
pub fn prepare_rootfs(
    sys: &dyn Syscall,
    spec: &Spec,
    rootfs: &Path,
    cgroup: &CgroupView,
    console: Option<&Path>,
) -> Result<(), Error> {
    // Our mounts must not propagate back to the host; rslave still lets host unmounts reach us.
    let propagation = match spec.linux.rootfs_propagation.as_deref() {
        None | Some("") => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        Some(p) => {
            let o = MountOptions::parse(&[p]);
            if o.propagation.is_empty() {
                return Err(Error::InvalidSpec(format!(
                    "rootfsPropagation {p:?} is not a propagation"
                )));
            }
            o.propagation
        }
    };
    sys.mount(None, Path::new("/"), None, propagation, None)
        .map_err(sys_err(format!("make / {propagation:?}")))?;
    // pivot_root needs the new root to be a mount point; the caller's overlay already is,
    // but a plain directory (and any rootfs on a shared parent) is made one here.
    sys.mount(Some(rootfs), rootfs, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)
        .map_err(sys_err(format!("bind rootfs {}", rootfs.display())))?;

    for m in &spec.mounts {
        mount_entry(sys, rootfs, m, cgroup)?;
    }
    create_devices(sys, rootfs, &spec.linux.devices)?;
    dev_symlinks(sys, rootfs)?;
    if let Some(tty) = console {
        let dest = secure_join(rootfs, Path::new("/dev/console")).map_err(sys_err("resolve /dev/console"))?;
        create_file(&dest).map_err(sys_err(format!("create {}", dest.display())))?;
        sys.mount(Some(tty), &dest, None, MsFlags::MS_BIND, None)
            .map_err(sys_err(format!("bind console {}", tty.display())))?;
    }
    pivot(sys, rootfs)
}

/// `pivot_root(".", ".")` from inside the rootfs: the old root ends up stacked on the new one
/// and is detached right away, so no `put_old` directory is needed in the image (runc's way).
/// The old root is made rslave first so that detaching it does not propagate to the host.
fn pivot(sys: &dyn Syscall, rootfs: &Path) -> Result<(), Error> {
    let dot = Path::new(".");
    sys.chdir(rootfs)
        .map_err(sys_err(format!("chdir {}", rootfs.display())))?;
    sys.pivot_root(dot, dot).map_err(sys_err("pivot_root"))?;
    sys.mount(None, dot, None, MsFlags::MS_SLAVE | MsFlags::MS_REC, None)
        .map_err(sys_err("make old root rslave"))?;
    sys.umount2(dot, MntFlags::MNT_DETACH)
        .map_err(sys_err("detach old root"))?;
    sys.chdir(Path::new("/")).map_err(sys_err("chdir /"))
}

fn mount_entry(sys: &dyn Syscall, rootfs: &Path, m: &Mount, cgroup: &CgroupView) -> Result<(), Error> {
    let dest = secure_join(rootfs, Path::new(&m.destination)).map_err(sys_err(format!("resolve {}", m.destination)))?;
    let opts = MountOptions::parse(&m.options);
    let kind = m.kind.as_deref().unwrap_or("none");
    let what = |verb: &str| format!("{verb} {} on {}", m.source.as_deref().unwrap_or(kind), m.destination);
    if kind == "bind" || opts.is_bind() {
        let source = m
            .source
            .as_deref()
            .ok_or_else(|| Error::InvalidSpec(format!("bind mount on {} has no source", m.destination)))?;
        let meta = fs::metadata(source).map_err(sys_err(format!("bind source {source}")))?;
        if meta.is_dir() {
            create_dir_all(&dest, 0o755)
        } else {
            create_file(&dest)
        }
        .map_err(sys_err(what("create mount point for")))?;
        let flags = MsFlags::MS_BIND | (opts.flags & MsFlags::MS_REC);
        sys.mount(Some(Path::new(source)), &dest, None, flags, None)
            .map_err(sys_err(what("bind")))?;
        let remount = opts.bind_remount_flags();
        if !remount.is_empty() {
            bind_remount(sys, &dest, remount).map_err(sys_err(what("remount")))?;
        }
    } else if kind == "cgroup" {
        mount_cgroup(sys, &dest, &opts, cgroup).map_err(sys_err(what("mount")))?;
    } else {
        create_dir_all(&dest, 0o755).map_err(sys_err(what("create mount point for")))?;
        let source = PathBuf::from(m.source.as_deref().unwrap_or(kind));
        let data = opts.data_string();
        sys.mount(Some(&source), &dest, Some(kind), opts.flags, data.as_deref())
            .map_err(sys_err(what("mount")))?;
    }
    if !opts.propagation.is_empty() {
        sys.mount(None, &dest, None, opts.propagation, None)
            .map_err(sys_err(what("set propagation of")))?;
    }
    Ok(())
}

/// `MS_BIND|MS_REMOUNT|flags`, keeping the mount's own `nosuid`/`nodev`/`noexec`/atime flags.
fn bind_remount(sys: &dyn Syscall, dest: &Path, flags: MsFlags) -> io::Result<()> {
    let kept = sys.mount_flags(dest)? & KEPT_ON_REMOUNT;
    sys.mount(
        None,
        dest,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags | kept,
        None,
    )
}

/// A `cgroup` mount shows the container its own cgroup, never the host's tree: on v2 its
/// directory bound at the destination; on v1 a tmpfs with each hierarchy's directory bound
/// under the hierarchy's name (`memory`, `cpu,cpuacct` plus `cpu` and `cpuacct` symlinks).
fn mount_cgroup(sys: &dyn Syscall, dest: &Path, opts: &MountOptions, cgroup: &CgroupView) -> io::Result<()> {
    let base = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let ro = opts.flags & MsFlags::MS_RDONLY;
    create_dir_all(dest, 0o755)?;
    match cgroup.version {
        None => Err(io::Error::other(
            "no cgroup to show (the host has no cgroup filesystem)",
        )),
        Some(Version::V2) => {
            let dir = cgroup
                .dirs
                .first()
                .ok_or_else(|| io::Error::other("no cgroup directory"))?;
            sys.mount(Some(&dir.path), dest, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
            bind_remount(sys, dest, base | ro)
        }
        Some(Version::V1 | Version::Hybrid) => {
            sys.mount(Some(Path::new("tmpfs")), dest, Some("tmpfs"), base, Some("mode=755"))?;
            for d in &cgroup.dirs {
                if d.name.is_empty() || d.name.contains('/') {
                    continue;
                }
                let sub = dest.join(&d.name);
                create_dir_all(&sub, 0o755)?;
                sys.mount(Some(&d.path), &sub, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
                bind_remount(sys, &sub, base | ro)?;
                if d.name.contains(',') {
                    for alias in d.name.split(',') {
                        let link = dest.join(alias);
                        if fs::symlink_metadata(&link).is_err() {
                            sys.symlink(Path::new(&d.name), &link)?;
                        }
                    }
                }
            }
            if !ro.is_empty() {
                sys.mount(None, dest, None, MsFlags::MS_REMOUNT | base | ro, Some("mode=755"))?;
            }
            Ok(())
        }
    }
}

fn create_devices(sys: &dyn Syscall, rootfs: &Path, devices: &[Device]) -> Result<(), Error> {
    let mut all: Vec<Device> = devices.to_vec();
    for (path, major, minor) in DEFAULT_DEVICES {
        if !all.iter().any(|d| Path::new(&d.path) == Path::new(path)) {
            all.push(Device {
                path: path.to_string(),
                kind: "c".into(),
                major: *major,
                minor: *minor,
                file_mode: Some(0o666),
                // Created by root: already owned by root.
                uid: None,
                gid: None,
            });
        }
    }
    for d in &all {
        create_device(sys, rootfs, d).map_err(sys_err(format!("create device {}", d.path)))?;
    }
    Ok(())
}

/// `mknod` the node; where that is refused (`EPERM`: a user namespace, a `nodev` /dev),
/// bind the host's node of the same path instead.
fn create_device(sys: &dyn Syscall, rootfs: &Path, d: &Device) -> io::Result<()> {
    let dest = secure_join(rootfs, Path::new(&d.path))?;
    if let Some(parent) = dest.parent() {
        create_dir_all(parent, 0o755)?;
    }
    let kind = match d.kind.as_str() {
        "c" | "u" => SFlag::S_IFCHR,
        "b" => SFlag::S_IFBLK,
        "p" => SFlag::S_IFIFO,
        k => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown device type {k:?}"),
            ))
        }
    };
    // A spec may give the whole st_mode (docker writes 0o20666): keep the permission bits.
    let perm = Mode::from_bits_truncate(d.file_mode.unwrap_or(0o666) & 0o7777);
    match fs::symlink_metadata(&dest) {
        Ok(m) if m.is_dir() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a directory is in the way",
            ))
        }
        Ok(_) => fs::remove_file(&dest)?,
        Err(_) => {}
    }
    let dev = nix::sys::stat::makedev(d.major as u64, d.minor as u64);
    match sys.mknod(&dest, kind, perm, dev) {
        Ok(()) => {
            if d.uid.is_some() || d.gid.is_some() {
                sys.lchown(&dest, d.uid, d.gid)?;
            }
            Ok(())
        }
        Err(e) if e.raw_os_error() == Some(Errno::EPERM as i32) => {
            create_file(&dest)?;
            sys.mount(Some(Path::new(&d.path)), &dest, None, MsFlags::MS_BIND, None)
        }
        Err(e) => Err(e),
    }
}

/// The `/dev` symlinks every Linux program expects (runtime-spec "Default Devices" and
/// what runc adds): fd, stdin/stdout/stderr, ptmx into the container's own devpts, core.
fn dev_symlinks(sys: &dyn Syscall, rootfs: &Path) -> Result<(), Error> {
    let dev = secure_join(rootfs, Path::new("/dev")).map_err(sys_err("resolve /dev"))?;
    if !dev.is_dir() {
        return Ok(());
    }
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
        ("pts/ptmx", "ptmx"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "core"));
    }
    for (target, name) in links {
        let link = dev.join(name);
        if fs::symlink_metadata(&link).is_ok() {
            continue;
        }
        match sys.symlink(Path::new(target), &link) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(sys_err(format!("symlink /dev/{name}"))(e))
            }
            _ => {}
        }
    }
    Ok(())
}

/// After the pivot, with `root` the container's root (`/`; a directory in tests): read-only
/// paths, masked paths, then the read-only root last (a read-only root first would stop
/// nothing here, but runc's order keeps the remounts independent of it).
pub fn finish_rootfs(sys: &dyn Syscall, spec: &Spec, root: &Path) -> Result<(), Error> {
    for p in &spec.linux.readonly_paths {
        let dest = secure_join(root, Path::new(p)).map_err(sys_err(format!("resolve {p}")))?;
        if fs::symlink_metadata(&dest).is_err() {
            continue;
        }
        sys.mount(Some(&dest), &dest, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)
            .map_err(sys_err(format!("bind read-only path {p}")))?;
        bind_remount(sys, &dest, MsFlags::MS_RDONLY).map_err(sys_err(format!("remount read-only path {p}")))?;
    }
    let null = root.join("dev/null");
    for p in &spec.linux.masked_paths {
        let dest = secure_join(root, Path::new(p)).map_err(sys_err(format!("resolve {p}")))?;
        let Ok(meta) = fs::symlink_metadata(&dest) else {
            continue;
        };
        if meta.is_dir() {
            sys.mount(
                Some(Path::new("tmpfs")),
                &dest,
                Some("tmpfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                None,
            )
        } else {
            sys.mount(Some(&null), &dest, None, MsFlags::MS_BIND, None)
        }
        .map_err(sys_err(format!("mask {p}")))?;
    }
    if spec.root.readonly {
        bind_remount(sys, root, MsFlags::MS_RDONLY).map_err(sys_err("remount root read-only"))?;
    }
    Ok(())
}
