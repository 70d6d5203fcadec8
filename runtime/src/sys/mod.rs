//! Privileged syscalls behind a trait, so that mount, namespace and identity decisions are
//! unit-tested without root.
//!
//! [`Syscall`] is the narrow set of operations the runtime performs on the kernel; [`Linux`]
//! performs them, [`Recording`] records them as [`Call`] data (and can be told to fail some).
//! The double is always injected explicitly (`&dyn Syscall` parameters), never chosen by
//! `cfg!(test)`: tests that run the real thing and tests that check the plan live side by side.
//!
//! Helpers on top of the trait: [`mount_all`] / [`unmount`] apply the snapshotter's mounts
//! ([`crate::snapshot::Mount`]) onto a directory; [`MountOptions`] parses fstab-style options;
//! [`secure_join`] and friends resolve paths inside a container's root without escaping it.

mod linux;
mod options;
mod path;
mod recording;

pub use linux::Linux;
pub use options::MountOptions;
pub use path::{create_dir_all, create_file, read_in_root, secure_join, MAX_LINKS};
pub use recording::{Call, Recording};

use crate::snapshot::Mount;
use caps::{Capability, CapsHashSet};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::resource::Resource;
use nix::sys::stat::{Mode, SFlag};
use std::io;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

/// One of a thread's capability sets (`capabilities(7)`), as the runtime-spec names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CapabilitySet {
    /// The ceiling for what any later exec may gain; only ever shrinks.
    Bounding,
    /// What the kernel checks right now.
    Effective,
    /// What the thread may make effective.
    Permitted,
    /// What survives an exec into a program with matching file capabilities.
    Inheritable,
    /// What survives an exec of an ordinary program by a non-root user.
    Ambient,
}

/// The privileged operations of the runtime. Each mirrors one syscall (or one fixed sequence,
/// documented on the method) so a recorded list reads like an strace.
pub trait Syscall {
    /// `mount(2)`.
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()>;
    /// Mounts an overlay filesystem on `target` from fstab-style `options` (`lowerdir=a:b`,
    /// `upperdir=…`, `workdir=…`, other overlay options), whose paths are relative to `cwd`
    /// when given. One call because how the options reach the kernel depends on the kernel
    /// (see [`Linux`]).
    fn mount_overlay(&self, target: &Path, options: &[String], cwd: Option<&Path>) -> io::Result<()>;
    /// `umount2(2)`.
    fn umount2(&self, target: &Path, flags: MntFlags) -> io::Result<()>;
    /// The per-mount flags (`MS_NOSUID`, `MS_NODEV`, `MS_NOEXEC`, atime, `MS_RDONLY`) of the
    /// mount holding `path`: a bind remount replaces them all, so callers carry them over.
    fn mount_flags(&self, path: &Path) -> io::Result<MsFlags>;
    /// `pivot_root(2)`.
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()>;
    /// `chdir(2)`.
    fn chdir(&self, path: &Path) -> io::Result<()>;
    /// `sethostname(2)`.
    fn sethostname(&self, name: &str) -> io::Result<()>;
    /// `unshare(2)`.
    fn unshare(&self, flags: CloneFlags) -> io::Result<()>;
    /// `setns(2)` into the namespace open at `fd`.
    fn setns(&self, fd: BorrowedFd<'_>, kind: CloneFlags) -> io::Result<()>;
    /// `mknod(2)`.
    fn mknod(&self, path: &Path, kind: SFlag, perm: Mode, dev: u64) -> io::Result<()>;
    /// `lchown(2)` (a `None` id is left unchanged).
    fn lchown(&self, path: &Path, uid: Option<u32>, gid: Option<u32>) -> io::Result<()>;
    /// `symlink(2)`: creates `link` pointing at `target`.
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()>;
    /// `setrlimit(2)`.
    fn setrlimit(&self, resource: Resource, soft: u64, hard: u64) -> io::Result<()>;
    /// `setsid(2)`.
    fn setsid(&self) -> io::Result<()>;
    /// `ioctl(fd, TIOCSCTTY, 0)`: makes the terminal on `fd` the session's controlling terminal.
    fn set_controlling_terminal(&self, fd: BorrowedFd<'_>) -> io::Result<()>;
    /// `setgroups(2)`: the supplementary groups (empty drops them all).
    fn setgroups(&self, gids: &[u32]) -> io::Result<()>;
    /// `setresgid(2)` with all three ids equal.
    fn setresgid(&self, gid: u32) -> io::Result<()>;
    /// `setresuid(2)` with all three ids equal.
    fn setresuid(&self, uid: u32) -> io::Result<()>;
    /// `prctl(PR_SET_KEEPCAPS)`: keep the permitted set across a switch away from uid 0.
    fn set_keepcaps(&self, keep: bool) -> io::Result<()>;
    /// Makes `set` exactly `caps`. For [`CapabilitySet::Bounding`] that is one
    /// `PR_CAPBSET_DROP` per capability the kernel knows and `caps` lacks; for
    /// [`CapabilitySet::Ambient`] a clear then one raise each.
    fn set_capabilities(&self, set: CapabilitySet, caps: &CapsHashSet) -> io::Result<()>;
    /// `prctl(PR_SET_NO_NEW_PRIVS, 1)`.
    fn set_no_new_privs(&self) -> io::Result<()>;
    /// `seccomp(SECCOMP_SET_MODE_FILTER)` with `program` (through seccompiler, which sets
    /// `no_new_privs` first, as an unprivileged filter requires): for this thread and what it
    /// execs, irrevocably.
    fn seccomp(&self, program: &crate::seccomp::Program) -> io::Result<()>;
}

/// Parses capability names (`CAP_CHOWN`, or `chown`); names this build does not know are
/// returned apart so the caller can warn (a newer spec on an older runtime) instead of failing.
pub fn parse_capabilities(names: &[String]) -> (CapsHashSet, Vec<String>) {
    let mut set = CapsHashSet::new();
    let mut unknown = Vec::new();
    for n in names {
        match caps::to_canonical(n).parse::<Capability>() {
            Ok(c) => {
                set.insert(c);
            }
            Err(_) => unknown.push(n.clone()),
        }
    }
    (set, unknown)
}

/// Applies snapshot mounts (as computed by the snapshotter) onto `target`, in order.
///
/// `bind` mounts honour `rbind` and `ro` (a read-only bind takes a second, remounting call);
/// `overlay` goes through [`Syscall::mount_overlay`]; any other type is mounted as given.
/// When [`Mount::cwd`] is set, relative paths in the options (and a bind's source) are
/// relative to it. If one mount fails, those already made are unmounted again, so the target
/// is left as it was.
pub fn mount_all(sys: &dyn Syscall, mounts: &[Mount], target: &Path) -> io::Result<()> {
    for (done, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(sys, m, target) {
            for _ in 0..done {
                let _ = sys.umount2(target, MntFlags::MNT_DETACH);
            }
            return Err(io::Error::new(
                e.kind(),
                format!("mount {} {} on {}: {e}", m.kind, m.source, target.display()),
            ));
        }
    }
    Ok(())
}

fn mount_one(sys: &dyn Syscall, m: &Mount, target: &Path) -> io::Result<()> {
    let relative = |p: &str| -> PathBuf {
        match &m.cwd {
            Some(cwd) if !Path::new(p).is_absolute() => cwd.join(p),
            _ => PathBuf::from(p),
        }
    };
    match m.kind.as_str() {
        "overlay" => sys.mount_overlay(target, &m.options, m.cwd.as_deref()),
        "bind" | "rbind" => {
            let mut o = MountOptions::parse(&m.options);
            o.flags.insert(MsFlags::MS_BIND);
            if m.kind == "rbind" {
                o.flags.insert(MsFlags::MS_REC);
            }
            let source = relative(&m.source);
            sys.mount(
                Some(&source),
                target,
                None,
                o.flags & (MsFlags::MS_BIND | MsFlags::MS_REC),
                None,
            )?;
            let remount = o.bind_remount_flags();
            if !remount.is_empty() {
                let r = sys.mount(
                    None,
                    target,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | remount,
                    None,
                );
                if let Err(e) = r {
                    let _ = sys.umount2(target, MntFlags::MNT_DETACH);
                    return Err(e);
                }
            }
            if !o.propagation.is_empty() {
                sys.mount(None, target, None, o.propagation, None)?;
            }
            Ok(())
        }
        kind => {
            let o = MountOptions::parse(&m.options);
            let data = o.data_string();
            sys.mount(Some(&relative(&m.source)), target, Some(kind), o.flags, data.as_deref())
        }
    }
}

/// Unmounts everything stacked on `target`: plain `umount2` first, `MNT_DETACH` when the
/// mount is busy (a process still has a file open in it: the mount disappears from the tree
/// now and is freed when that process lets go). Nothing mounted there is success.
pub fn unmount(sys: &dyn Syscall, target: &Path) -> io::Result<()> {
    // Bounded: a target with more stacked mounts than this is not ours.
    for _ in 0..64 {
        match sys.umount2(target, MntFlags::empty()) {
            Ok(()) => continue,
            Err(e) => match Errno::from_raw(e.raw_os_error().unwrap_or(0)) {
                Errno::EINVAL | Errno::ENOENT => return Ok(()),
                Errno::EBUSY => sys.umount2(target, MntFlags::MNT_DETACH)?,
                _ => return Err(io::Error::new(e.kind(), format!("unmount {}: {e}", target.display()))),
            },
        }
    }
    Err(io::Error::other(format!(
        "unmount {}: still mounted after 64 unmounts",
        target.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(kind: &str, source: &str, options: &[&str], cwd: Option<&str>) -> Mount {
        Mount {
            kind: kind.into(),
            source: source.into(),
            options: options.iter().map(|s| s.to_string()).collect(),
            cwd: cwd.map(PathBuf::from),
        }
    }

    #[test]
    fn read_only_bind_is_bind_then_remount() {
        let sys = Recording::new();
        let t = Path::new("/run/c1/rootfs");
        mount_all(&sys, &[mount("bind", "/snap/7/fs", &["ro", "rbind"], None)], t).unwrap();
        assert_eq!(
            sys.calls(),
            vec![
                Call::Mount {
                    source: Some("/snap/7/fs".into()),
                    target: t.into(),
                    fstype: None,
                    flags: MsFlags::MS_BIND | MsFlags::MS_REC,
                    data: None,
                },
                Call::Mount {
                    source: None,
                    target: t.into(),
                    fstype: None,
                    flags: MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    data: None,
                },
            ]
        );
    }

    #[test]
    fn overlay_goes_through_mount_overlay_with_its_cwd() {
        let sys = Recording::new();
        let t = Path::new("/t");
        let opts = [
            "index=off",
            "lowerdir=3/fs:2/fs:1/fs",
            "upperdir=4/fs",
            "workdir=4/work",
        ];
        mount_all(&sys, &[mount("overlay", "overlay", &opts, Some("/snaps"))], t).unwrap();
        assert_eq!(
            sys.calls(),
            vec![Call::MountOverlay {
                target: t.into(),
                options: opts.iter().map(|s| s.to_string()).collect(),
                cwd: Some("/snaps".into()),
            }]
        );
    }

    #[test]
    fn a_failed_mount_undoes_the_earlier_ones() {
        let sys = Recording::new().failing(|c| matches!(c, Call::MountOverlay { .. }).then_some(Errno::EINVAL));
        let t = Path::new("/t");
        let err = mount_all(
            &sys,
            &[
                mount("bind", "/a", &["rbind"], None),
                mount("overlay", "overlay", &["lowerdir=/x:/y"], None),
            ],
            t,
        )
        .unwrap_err();
        assert!(err.to_string().contains("mount overlay overlay on /t"), "{err}");
        assert_eq!(
            sys.calls().last(),
            Some(&Call::Umount2 {
                target: t.into(),
                flags: MntFlags::MNT_DETACH
            })
        );
    }

    #[test]
    fn unmount_peels_stacked_mounts_and_detaches_busy_ones() {
        // Two mounts stacked, the second busy once: umount, umount(EBUSY), detach, umount(EINVAL).
        let busy = std::sync::atomic::AtomicUsize::new(0);
        let sys = Recording::new().failing(move |c| match c {
            Call::Umount2 { flags, .. } if flags.is_empty() => {
                match busy.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                    1 => Some(Errno::EBUSY),
                    2 => Some(Errno::EINVAL),
                    _ => None,
                }
            }
            _ => None,
        });
        unmount(&sys, Path::new("/t")).unwrap();
        let flags: Vec<MntFlags> = sys
            .calls()
            .into_iter()
            .map(|c| match c {
                Call::Umount2 { flags, .. } => flags,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            flags,
            vec![
                MntFlags::empty(),
                MntFlags::empty(),
                MntFlags::MNT_DETACH,
                MntFlags::empty()
            ]
        );
    }

    #[test]
    fn capability_names_parse_with_or_without_prefix() {
        let (set, unknown) = parse_capabilities(&["CAP_CHOWN".into(), "net_raw".into(), "CAP_NOPE".into()]);
        assert!(set.contains(&Capability::CAP_CHOWN));
        assert!(set.contains(&Capability::CAP_NET_RAW));
        assert_eq!(unknown, vec!["CAP_NOPE".to_string()]);
    }
}
