//! The recording double: every call becomes a [`Call`] value; nothing touches the kernel.

use super::{CapabilitySet, Syscall};
use caps::CapsHashSet;
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::resource::Resource;
use nix::sys::stat::{Mode, SFlag};
use std::io;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One recorded syscall, with its arguments as owned data.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // the fields are the syscall's arguments, named as in its man page
pub enum Call {
    Mount {
        source: Option<PathBuf>,
        target: PathBuf,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    MountOverlay {
        target: PathBuf,
        options: Vec<String>,
        cwd: Option<PathBuf>,
    },
    Umount2 {
        target: PathBuf,
        flags: MntFlags,
    },
    PivotRoot {
        new_root: PathBuf,
        put_old: PathBuf,
    },
    Chdir(PathBuf),
    /// A seccomp filter of that many instructions.
    Seccomp {
        instructions: usize,
    },
    Sethostname(String),
    Unshare(CloneFlags),
    Setns(CloneFlags),
    Mknod {
        path: PathBuf,
        kind: SFlag,
        perm: Mode,
        dev: u64,
    },
    Lchown {
        path: PathBuf,
        uid: Option<u32>,
        gid: Option<u32>,
    },
    Symlink {
        target: PathBuf,
        link: PathBuf,
    },
    Setrlimit {
        resource: Resource,
        soft: u64,
        hard: u64,
    },
    Setsid,
    SetControllingTerminal,
    Setgroups(Vec<u32>),
    Setresgid(u32),
    Setresuid(u32),
    SetKeepcaps(bool),
    SetCapabilities {
        set: CapabilitySet,
        caps: CapsHashSet,
    },
    SetNoNewPrivs,
}

type FailRule = Box<dyn Fn(&Call) -> Option<Errno> + Send + Sync>;

/// Records calls instead of making them. Every call succeeds unless a [`Recording::failing`]
/// rule says otherwise; a failed call is recorded too (it was attempted).
pub struct Recording {
    calls: Mutex<Vec<Call>>,
    fail: Option<FailRule>,
    mount_flags: MsFlags,
}

impl Default for Recording {
    fn default() -> Self {
        Recording {
            calls: Mutex::new(Vec::new()),
            fail: None,
            mount_flags: MsFlags::empty(),
        }
    }
}

impl std::fmt::Debug for Recording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recording").field("calls", &self.calls()).finish()
    }
}

impl Recording {
    /// A recorder on which every call succeeds.
    pub fn new() -> Recording {
        Recording::default()
    }

    /// Fails the calls for which `rule` returns an errno (to exercise fallbacks and cleanup).
    pub fn failing(mut self, rule: impl Fn(&Call) -> Option<Errno> + Send + Sync + 'static) -> Recording {
        self.fail = Some(Box::new(rule));
        self
    }

    /// What [`Syscall::mount_flags`] answers for every path (default: none).
    pub fn with_mount_flags(mut self, flags: MsFlags) -> Recording {
        self.mount_flags = flags;
        self
    }

    /// The calls so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls
            .lock()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn record(&self, call: Call) -> io::Result<()> {
        let failure = self.fail.as_ref().and_then(|f| f(&call));
        match self.calls.lock() {
            Ok(mut c) => c.push(call),
            Err(p) => p.into_inner().push(call),
        }
        match failure {
            Some(errno) => Err(io::Error::from(errno)),
            None => Ok(()),
        }
    }
}

impl Syscall for Recording {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        self.record(Call::Mount {
            source: source.map(Path::to_path_buf),
            target: target.into(),
            fstype: fstype.map(str::to_string),
            flags,
            data: data.map(str::to_string),
        })
    }
    fn mount_overlay(&self, target: &Path, options: &[String], cwd: Option<&Path>) -> io::Result<()> {
        self.record(Call::MountOverlay {
            target: target.into(),
            options: options.to_vec(),
            cwd: cwd.map(Path::to_path_buf),
        })
    }
    fn umount2(&self, target: &Path, flags: MntFlags) -> io::Result<()> {
        self.record(Call::Umount2 {
            target: target.into(),
            flags,
        })
    }
    fn mount_flags(&self, _path: &Path) -> io::Result<MsFlags> {
        Ok(self.mount_flags)
    }
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()> {
        self.record(Call::PivotRoot {
            new_root: new_root.into(),
            put_old: put_old.into(),
        })
    }
    fn chdir(&self, path: &Path) -> io::Result<()> {
        self.record(Call::Chdir(path.into()))
    }
    fn sethostname(&self, name: &str) -> io::Result<()> {
        self.record(Call::Sethostname(name.into()))
    }
    fn unshare(&self, flags: CloneFlags) -> io::Result<()> {
        self.record(Call::Unshare(flags))
    }
    fn setns(&self, _fd: BorrowedFd<'_>, kind: CloneFlags) -> io::Result<()> {
        self.record(Call::Setns(kind))
    }
    fn mknod(&self, path: &Path, kind: SFlag, perm: Mode, dev: u64) -> io::Result<()> {
        self.record(Call::Mknod {
            path: path.into(),
            kind,
            perm,
            dev,
        })
    }
    fn lchown(&self, path: &Path, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        self.record(Call::Lchown {
            path: path.into(),
            uid,
            gid,
        })
    }
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        self.record(Call::Symlink {
            target: target.into(),
            link: link.into(),
        })
    }
    fn setrlimit(&self, resource: Resource, soft: u64, hard: u64) -> io::Result<()> {
        self.record(Call::Setrlimit { resource, soft, hard })
    }
    fn setsid(&self) -> io::Result<()> {
        self.record(Call::Setsid)
    }
    fn set_controlling_terminal(&self, _fd: BorrowedFd<'_>) -> io::Result<()> {
        self.record(Call::SetControllingTerminal)
    }
    fn setgroups(&self, gids: &[u32]) -> io::Result<()> {
        self.record(Call::Setgroups(gids.to_vec()))
    }
    fn setresgid(&self, gid: u32) -> io::Result<()> {
        self.record(Call::Setresgid(gid))
    }
    fn setresuid(&self, uid: u32) -> io::Result<()> {
        self.record(Call::Setresuid(uid))
    }
    fn set_keepcaps(&self, keep: bool) -> io::Result<()> {
        self.record(Call::SetKeepcaps(keep))
    }
    fn set_capabilities(&self, set: CapabilitySet, caps: &CapsHashSet) -> io::Result<()> {
        self.record(Call::SetCapabilities {
            set,
            caps: caps.clone(),
        })
    }
    fn set_no_new_privs(&self) -> io::Result<()> {
        self.record(Call::SetNoNewPrivs)
    }
    fn seccomp(&self, program: &crate::seccomp::Program) -> io::Result<()> {
        self.record(Call::Seccomp {
            instructions: program.len(),
        })
    }
}
