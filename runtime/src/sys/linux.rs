//! The real kernel.

use super::{CapabilitySet, MountOptions, Syscall};
use caps::{CapSet, CapsHashSet};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::resource::Resource;
use nix::sys::stat::{Mode, SFlag};
use nix::sys::statvfs::FsFlags;
use nix::unistd::{Gid, Uid};
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The real kernel: each method is the syscall it names.
///
/// # Overlay mounts
///
/// [`Syscall::mount_overlay`] first uses the new mount API (`fsopen` / `fsconfig` /
/// `fsmount` / `move_mount`) and hands each lower layer to the kernel as its own `lowerdir+`
/// parameter (Linux ≥ 6.8). That is chosen over `mount(2)` because:
/// - `mount(2)` takes all options in one page (4096 bytes): an image with a hundred layers
///   overflows it, which is why snapshot mounts carry relative paths and a `cwd`. With one
///   parameter per layer there is no limit, so relative paths are simply joined to `cwd` here,
///   in this process: no child process, no process-wide `chdir` (the node is multi-threaded).
/// - the filesystem context keeps the kernel's own error text ("overlay: failed to resolve
///   '…'"), which goes into the error instead of a bare `EINVAL`.
///
/// On older kernels (`fsopen` → `ENOSYS`, or `lowerdir+` → `EINVAL`) it falls back to
/// `mount(2)` with absolute paths when they fit in a page, and otherwise runs util-linux
/// `mount(8)` with `current_dir(cwd)` and the relative options: a fresh process is the only
/// safe way to mount from another working directory in a threaded program (fork + chdir in a
/// threaded process is not async-signal-safe; `Command` does fork + exec correctly).
#[derive(Debug, Default, Clone, Copy)]
pub struct Linux;

fn errno_err(e: Errno) -> io::Error {
    io::Error::from(e)
}

fn caps_err(e: caps::errors::CapsError) -> io::Error {
    io::Error::other(e.to_string())
}

impl Syscall for Linux {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data).map_err(errno_err)
    }

    fn mount_overlay(&self, target: &Path, options: &[String], cwd: Option<&Path>) -> io::Result<()> {
        let params = OverlayParams::parse(options, cwd);
        match params.mount_with_fs_context(target) {
            Err(Fallback) => params.mount_legacy(target, options, cwd),
            Ok(r) => r,
        }
    }

    fn umount2(&self, target: &Path, flags: MntFlags) -> io::Result<()> {
        nix::mount::umount2(target, flags).map_err(errno_err)
    }

    fn mount_flags(&self, path: &Path) -> io::Result<MsFlags> {
        let st = nix::sys::statvfs::statvfs(path).map_err(errno_err)?;
        let f = st.flags();
        let mut out = MsFlags::empty();
        for (st, ms) in [
            (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_SYNCHRONOUS, MsFlags::MS_SYNCHRONOUS),
            (FsFlags::ST_MANDLOCK, MsFlags::MS_MANDLOCK),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if f.contains(st) {
                out.insert(ms);
            }
        }
        Ok(out)
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()> {
        nix::unistd::pivot_root(new_root, put_old).map_err(errno_err)
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        nix::unistd::chdir(path).map_err(errno_err)
    }

    fn sethostname(&self, name: &str) -> io::Result<()> {
        nix::unistd::sethostname(name).map_err(errno_err)
    }

    fn unshare(&self, flags: CloneFlags) -> io::Result<()> {
        nix::sched::unshare(flags).map_err(errno_err)
    }

    fn setns(&self, fd: BorrowedFd<'_>, kind: CloneFlags) -> io::Result<()> {
        nix::sched::setns(fd, kind).map_err(errno_err)
    }

    fn mknod(&self, path: &Path, kind: SFlag, perm: Mode, dev: u64) -> io::Result<()> {
        nix::sys::stat::mknod(path, kind, perm, dev).map_err(errno_err)
    }

    fn lchown(&self, path: &Path, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        std::os::unix::fs::lchown(path, uid, gid)
    }

    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, link)
    }

    fn setrlimit(&self, resource: Resource, soft: u64, hard: u64) -> io::Result<()> {
        nix::sys::resource::setrlimit(resource, soft, hard).map_err(errno_err)
    }

    fn setsid(&self) -> io::Result<()> {
        nix::unistd::setsid().map(drop).map_err(errno_err)
    }

    fn set_controlling_terminal(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        tiocsctty(fd)
    }

    fn setgroups(&self, gids: &[u32]) -> io::Result<()> {
        let gids: Vec<Gid> = gids.iter().map(|g| Gid::from_raw(*g)).collect();
        nix::unistd::setgroups(&gids).map_err(errno_err)
    }

    fn setresgid(&self, gid: u32) -> io::Result<()> {
        let g = Gid::from_raw(gid);
        nix::unistd::setresgid(g, g, g).map_err(errno_err)
    }

    fn setresuid(&self, uid: u32) -> io::Result<()> {
        let u = Uid::from_raw(uid);
        nix::unistd::setresuid(u, u, u).map_err(errno_err)
    }

    fn set_keepcaps(&self, keep: bool) -> io::Result<()> {
        nix::sys::prctl::set_keepcaps(keep).map_err(errno_err)
    }

    fn set_capabilities(&self, set: CapabilitySet, wanted: &CapsHashSet) -> io::Result<()> {
        match set {
            CapabilitySet::Bounding => {
                let current = caps::read(None, CapSet::Bounding).map_err(caps_err)?;
                for c in current.difference(wanted) {
                    caps::drop(None, CapSet::Bounding, *c).map_err(caps_err)?;
                }
                Ok(())
            }
            CapabilitySet::Ambient => {
                // Clearing fails only on kernels without ambient capabilities (< 4.3), where
                // there is nothing to clear.
                let cleared = caps::clear(None, CapSet::Ambient);
                for c in wanted {
                    caps::raise(None, CapSet::Ambient, *c).map_err(caps_err)?;
                }
                if wanted.is_empty() {
                    return Ok(());
                }
                cleared.map_err(caps_err)
            }
            CapabilitySet::Effective => caps::set(None, CapSet::Effective, wanted).map_err(caps_err),
            CapabilitySet::Permitted => caps::set(None, CapSet::Permitted, wanted).map_err(caps_err),
            CapabilitySet::Inheritable => caps::set(None, CapSet::Inheritable, wanted).map_err(caps_err),
        }
    }

    fn set_no_new_privs(&self) -> io::Result<()> {
        nix::sys::prctl::set_no_new_privs().map_err(errno_err)
    }

    fn seccomp(&self, program: &crate::seccomp::Program) -> io::Result<()> {
        seccompiler::apply_filter(program).map_err(|e| match e {
            seccompiler::Error::Seccomp(io) | seccompiler::Error::Prctl(io) => io,
            other => io::Error::other(other.to_string()),
        })
    }
}

#[allow(unsafe_code)]
fn tiocsctty(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an int argument (0: do not steal the terminal from another
    // session) and touches no memory of ours; the fd is valid for the borrow.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Overlay options with the paths made absolute.
#[derive(Debug, Default, PartialEq)]
struct OverlayParams {
    /// Top-most first, as in `lowerdir=top:…:bottom`.
    lower: Vec<PathBuf>,
    upper: Option<PathBuf>,
    work: Option<PathBuf>,
    /// Everything else: flags (`ro`, `nosuid`) and overlay options (`index=off`, `userxattr`).
    other: MountOptions,
}

/// The kernel lacks what the new API path needs; use the old one.
struct Fallback;

impl OverlayParams {
    fn parse(options: &[String], cwd: Option<&Path>) -> OverlayParams {
        let abs = |p: &str| -> PathBuf {
            match cwd {
                Some(c) if !p.starts_with('/') => c.join(p),
                _ => PathBuf::from(p),
            }
        };
        let mut out = OverlayParams::default();
        let mut rest = Vec::new();
        for o in options {
            if let Some(v) = o.strip_prefix("lowerdir=") {
                out.lower = split_lowerdir(v).iter().map(|p| abs(p)).collect();
            } else if let Some(v) = o.strip_prefix("upperdir=") {
                out.upper = Some(abs(v));
            } else if let Some(v) = o.strip_prefix("workdir=") {
                out.work = Some(abs(v));
            } else {
                rest.push(o.as_str());
            }
        }
        out.other = MountOptions::parse(&rest);
        out
    }

    /// `Err(Fallback)` when this kernel lacks the API or `lowerdir+`; `Ok(result)` otherwise.
    fn mount_with_fs_context(&self, target: &Path) -> Result<io::Result<()>, Fallback> {
        let fs = match fsopen(c"overlay") {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => return Err(Fallback),
            Err(e) => return Ok(Err(e)),
        };
        let ctx = |what: &str, e: io::Error| -> io::Error {
            let log = fs_log(&fs);
            let detail = if log.is_empty() {
                String::new()
            } else {
                format!(" ({log})")
            };
            io::Error::new(e.kind(), format!("overlay {what}: {e}{detail}"))
        };
        for (i, l) in self.lower.iter().enumerate() {
            if let Err(e) = fsconfig_string(&fs, "lowerdir+", l.as_os_str().as_bytes()) {
                if i == 0 && e.raw_os_error() == Some(libc::EINVAL) {
                    return Err(Fallback);
                }
                return Ok(Err(ctx(&format!("lowerdir+ {}", l.display()), e)));
            }
        }
        let dirs = [("upperdir", &self.upper), ("workdir", &self.work)];
        for (key, dir) in dirs {
            if let Some(d) = dir {
                if let Err(e) = fsconfig_string(&fs, key, d.as_os_str().as_bytes()) {
                    return Ok(Err(ctx(&format!("{key} {}", d.display()), e)));
                }
            }
        }
        for d in &self.other.data {
            let r = match d.split_once('=') {
                Some((k, v)) => fsconfig_string(&fs, k, v.as_bytes()),
                None => fsconfig_flag(&fs, d),
            };
            if let Err(e) = r {
                return Ok(Err(ctx(d, e)));
            }
        }
        if let Err(e) = fsconfig_create(&fs) {
            return Ok(Err(ctx("create", e)));
        }
        let m = match fsmount(&fs, mount_attrs(self.other.flags)) {
            Ok(m) => m,
            Err(e) => return Ok(Err(ctx("fsmount", e))),
        };
        Ok(move_mount(&m, target).map_err(|e| ctx(&format!("move_mount to {}", target.display()), e)))
    }

    fn mount_legacy(&self, target: &Path, options: &[String], cwd: Option<&Path>) -> io::Result<()> {
        let mut data: Vec<String> = Vec::new();
        if !self.lower.is_empty() {
            let joined: Vec<String> = self
                .lower
                .iter()
                .map(|p| p.to_string_lossy().replace('\\', "\\\\").replace(':', "\\:"))
                .collect();
            data.push(format!("lowerdir={}", joined.join(":")));
        }
        if let Some(u) = &self.upper {
            data.push(format!("upperdir={}", u.display()));
        }
        if let Some(w) = &self.work {
            data.push(format!("workdir={}", w.display()));
        }
        data.extend(self.other.data.iter().cloned());
        let data = data.join(",");
        // mount(2) copies at most one page of options.
        if data.len() < PAGE {
            return nix::mount::mount(
                Some("overlay"),
                target,
                Some("overlay"),
                self.other.flags,
                Some(data.as_str()),
            )
            .map_err(errno_err);
        }
        let Some(cwd) = cwd else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "overlay on {}: {} bytes of options exceed one page and no cwd makes them shorter",
                    target.display(),
                    data.len()
                ),
            ));
        };
        let out = std::process::Command::new("mount")
            .current_dir(cwd)
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(options.join(","))
            .arg(target)
            .output()?;
        if out.status.success() {
            return Ok(());
        }
        Err(io::Error::other(format!(
            "mount(8) overlay on {}: {}",
            target.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// What `mount(2)` copies of its data argument.
const PAGE: usize = 4096;

/// Splits `lowerdir=` on unescaped `:`, undoing `\:` and `\\` escapes.
fn split_lowerdir(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ':' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// `MOUNT_ATTR_*` for `fsmount` from the `MS_*` per-mount flags.
fn mount_attrs(flags: MsFlags) -> u64 {
    let mut a = 0;
    for (ms, attr) in [
        (MsFlags::MS_RDONLY, libc::MOUNT_ATTR_RDONLY),
        (MsFlags::MS_NOSUID, libc::MOUNT_ATTR_NOSUID),
        (MsFlags::MS_NODEV, libc::MOUNT_ATTR_NODEV),
        (MsFlags::MS_NOEXEC, libc::MOUNT_ATTR_NOEXEC),
        (MsFlags::MS_NOATIME, libc::MOUNT_ATTR_NOATIME),
        (MsFlags::MS_STRICTATIME, libc::MOUNT_ATTR_STRICTATIME),
        (MsFlags::MS_NODIRATIME, libc::MOUNT_ATTR_NODIRATIME),
    ] {
        if flags.contains(ms) {
            a |= attr;
        }
    }
    a
}

fn cstring(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in a mount parameter"))
}

fn check(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

#[allow(unsafe_code)]
fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let raw = RawFd::try_from(fd).map_err(|_| io::Error::other("fd out of range"))?;
    // SAFETY: `fd` was just returned by the kernel as a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

#[allow(unsafe_code)]
fn fsopen(fstype: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: fsopen(2) reads a NUL-terminated string that outlives the call.
    let r = unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), libc::FSOPEN_CLOEXEC) };
    owned(check(r)?)
}

#[allow(unsafe_code)]
fn fsconfig_string(fs: &OwnedFd, key: &str, value: &[u8]) -> io::Result<()> {
    let key = cstring(key.as_bytes())?;
    let value = cstring(value)?;
    // SAFETY: fsconfig(2) with SET_STRING reads two NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            libc::FSCONFIG_SET_STRING,
            key.as_ptr(),
            value.as_ptr(),
            0,
        )
    };
    check(r).map(drop)
}

#[allow(unsafe_code)]
fn fsconfig_flag(fs: &OwnedFd, key: &str) -> io::Result<()> {
    let key = cstring(key.as_bytes())?;
    // SAFETY: fsconfig(2) with SET_FLAG reads one NUL-terminated string; value must be NULL.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            libc::FSCONFIG_SET_FLAG,
            key.as_ptr(),
            std::ptr::null::<libc::c_char>(),
            0,
        )
    };
    check(r).map(drop)
}

#[allow(unsafe_code)]
fn fsconfig_create(fs: &OwnedFd) -> io::Result<()> {
    // SAFETY: CMD_CREATE takes no pointers (key and value must be NULL).
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            libc::FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_char>(),
            0,
        )
    };
    check(r).map(drop)
}

#[allow(unsafe_code)]
fn fsmount(fs: &OwnedFd, attrs: u64) -> io::Result<OwnedFd> {
    // SAFETY: fsmount(2) takes only integers and returns a new fd.
    let r = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), libc::FSMOUNT_CLOEXEC, attrs) };
    owned(check(r)?)
}

#[allow(unsafe_code)]
fn move_mount(m: &OwnedFd, target: &Path) -> io::Result<()> {
    let to = cstring(target.as_os_str().as_bytes())?;
    // SAFETY: move_mount(2) reads two NUL-terminated strings ("" and the target) that outlive
    // the call; the source is the detached mount behind `m`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            m.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    check(r).map(drop)
}

/// The messages the kernel logged on a filesystem context (`e overlay: …` lines), joined.
fn fs_log(fs: &OwnedFd) -> String {
    let mut lines = Vec::new();
    let mut buf = [0u8; 1024];
    // The log holds at most 8 messages; each read returns one, then ENODATA.
    for _ in 0..8 {
        match nix::unistd::read(fs, &mut buf) {
            Ok(n) if n > 0 => {
                let msg = String::from_utf8_lossy(&buf[..n]);
                let msg = msg.trim_end();
                lines.push(msg.strip_prefix("e ").unwrap_or(msg).to_string());
            }
            _ => break,
        }
    }
    lines.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_options_become_absolute_layers() {
        let opts: Vec<String> = [
            "index=off",
            "lowerdir=3/fs:2/fs:/abs/1",
            "upperdir=4/fs",
            "workdir=4/work",
            "ro",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let p = OverlayParams::parse(&opts, Some(Path::new("/snaps")));
        assert_eq!(
            p.lower,
            vec![PathBuf::from("/snaps/3/fs"), "/snaps/2/fs".into(), "/abs/1".into()]
        );
        assert_eq!(p.upper, Some("/snaps/4/fs".into()));
        assert_eq!(p.work, Some("/snaps/4/work".into()));
        assert_eq!(p.other.data, vec!["index=off".to_string()]);
        assert_eq!(p.other.flags, MsFlags::MS_RDONLY);
        assert_eq!(mount_attrs(p.other.flags), libc::MOUNT_ATTR_RDONLY);
    }

    #[test]
    fn lowerdir_escapes() {
        assert_eq!(split_lowerdir(r"a\:b:c\\d::e"), vec!["a:b", r"c\d", "e"]);
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    /// A real overlay (kernel API, and the legacy path when the layers overflow a page) and a
    /// read-only bind through `mount_all`, in a private mount namespace of a child process so
    /// nothing leaks into the host's mount table.
    #[test]
    fn real_overlay_and_bind_mounts() {
        if !is_root() {
            assert!(
                !berth_conformance::peers::under_ci(),
                "mount tests need root under CI=true"
            );
            eprintln!("SKIP: real_overlay_and_bind_mounts needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let base = d.path();
        // 150 layers: as absolute paths far more than one page of `lowerdir=`, relative to
        // `cwd` less (so the legacy mount(8) path can take them too).
        let mut lowers = Vec::new();
        for i in 0..150 {
            let name = format!("l{i:03}-padding-padding");
            std::fs::create_dir_all(base.join(&name)).unwrap();
            std::fs::write(base.join(&name).join(format!("f{i}")), format!("{i}")).unwrap();
            lowers.push(name);
        }
        std::fs::write(base.join("l000-padding-padding/f149"), "top wins").unwrap();
        for d in ["upper", "work", "merged", "bound"] {
            std::fs::create_dir(base.join(d)).unwrap();
        }
        let overlay = crate::snapshot::Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                format!("lowerdir={}", lowers.join(":")),
                "upperdir=upper".into(),
                "workdir=work".into(),
            ],
            cwd: Some(base.to_path_buf()),
        };
        let bind = crate::snapshot::Mount {
            kind: "bind".into(),
            source: "merged".into(),
            options: vec!["ro".into(), "rbind".into()],
            cwd: Some(base.to_path_buf()),
        };
        let script = format!(
            "set -e; cat {base}/merged/f149 {base}/merged/f3; echo new > {base}/merged/n; cat {base}/upper/n; \
             if (echo x > {base}/bound/y) 2>/dev/null; then echo WRITABLE; fi; ls {base}/bound | wc -l",
            base = base.display()
        );
        // Mount inside `unshare -m` so the host never sees these mounts; the mounting itself is
        // done by this test binary re-run as a helper (see probe below).
        let out = std::process::Command::new("unshare")
            .args(["-m", "--propagation", "private", "--"])
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sys::linux::tests::mount_probe",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                "BERTH_MOUNT_PROBE",
                serde_json::to_string(&(base, &overlay, &bind)).unwrap(),
            )
            .env("BERTH_MOUNT_PROBE_SCRIPT", &script)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
        assert!(
            stdout.contains("top wins3new\n151\n"),
            "stdout:\n{stdout}\nstderr:\n{stderr}"
        );
        assert!(!stdout.contains("WRITABLE"), "{stdout}");
        // Nothing leaked into our namespace.
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mountinfo.contains(&base.display().to_string()));
    }

    /// The helper half of `real_overlay_and_bind_mounts`: runs only when re-executed with
    /// `BERTH_MOUNT_PROBE` set (inside a private mount namespace), and checks that the mounts
    /// work there; as a plain test it checks that unmounting an unmounted path is success.
    #[test]
    fn mount_probe() {
        let Ok(req) = std::env::var("BERTH_MOUNT_PROBE") else {
            if is_root() {
                let d = tempfile::tempdir().unwrap();
                super::super::unmount(&Linux, d.path()).unwrap();
            } else {
                assert!(
                    !berth_conformance::peers::under_ci(),
                    "mount tests need root under CI=true"
                );
                eprintln!("SKIP: mount_probe needs root");
            }
            return;
        };
        let (base, overlay, bind): (PathBuf, crate::snapshot::Mount, crate::snapshot::Mount) =
            serde_json::from_str(&req).unwrap();
        super::super::mount_all(&Linux, std::slice::from_ref(&overlay), &base.join("merged")).unwrap();
        super::super::mount_all(&Linux, &[bind], &base.join("bound")).unwrap();
        let script = std::env::var("BERTH_MOUNT_PROBE_SCRIPT").unwrap();
        let out = std::process::Command::new("sh").arg("-c").arg(script).output().unwrap();
        print!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        super::super::unmount(&Linux, &base.join("bound")).unwrap();
        super::super::unmount(&Linux, &base.join("merged")).unwrap();
        assert!(out.status.success());
        // The legacy path for kernels without `lowerdir+`: these options overflow a page, so it
        // is mount(8) run from `cwd` with the relative paths.
        let p = OverlayParams::parse(&overlay.options, Some(&base));
        p.mount_legacy(&base.join("merged"), &overlay.options, Some(&base))
            .unwrap();
        assert_eq!(std::fs::read_to_string(base.join("merged/f149")).unwrap(), "top wins");
        assert_eq!(std::fs::read_to_string(base.join("merged/n")).unwrap(), "new\n");
        super::super::unmount(&Linux, &base.join("merged")).unwrap();
        // And the short form through mount(2) with absolute paths.
        let short = vec!["lowerdir=l001-padding-padding:l002-padding-padding".to_string()];
        let p = OverlayParams::parse(&short, Some(&base));
        p.mount_legacy(&base.join("merged"), &short, Some(&base)).unwrap();
        assert_eq!(std::fs::read_to_string(base.join("merged/f2")).unwrap(), "2");
        super::super::unmount(&Linux, &base.join("merged")).unwrap();
    }
}
