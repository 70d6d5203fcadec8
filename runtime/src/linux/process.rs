//! The container process's identity (rlimits, user, groups, capabilities, no_new_privs) and
//! its exec, with the exit codes a shell (and docker) would give.

use super::{sys_err, Error};
use crate::spec::{Capabilities, Process};
use crate::sys::{parse_capabilities, CapabilitySet, Syscall};
use caps::CapsHashSet;
use nix::sys::resource::Resource;
use std::ffi::CString;
use std::fs;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// PATH when the spec's environment has none (docker's and runc's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Exit code when the program does not exist (as a shell's "command not found").
pub const EXIT_NOT_FOUND: i32 = 127;
/// Exit code when the program exists but cannot be executed.
pub const EXIT_CANNOT_EXECUTE: i32 = 126;
/// Exit code when the runtime itself failed to set the container up.
pub const EXIT_SETUP_FAILED: i32 = 125;

fn rlimit(name: &str) -> Option<Resource> {
    Some(match name {
        "RLIMIT_AS" => Resource::RLIMIT_AS,
        "RLIMIT_CORE" => Resource::RLIMIT_CORE,
        "RLIMIT_CPU" => Resource::RLIMIT_CPU,
        "RLIMIT_DATA" => Resource::RLIMIT_DATA,
        "RLIMIT_FSIZE" => Resource::RLIMIT_FSIZE,
        "RLIMIT_LOCKS" => Resource::RLIMIT_LOCKS,
        "RLIMIT_MEMLOCK" => Resource::RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => Resource::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => Resource::RLIMIT_NICE,
        "RLIMIT_NOFILE" => Resource::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => Resource::RLIMIT_NPROC,
        "RLIMIT_RSS" => Resource::RLIMIT_RSS,
        "RLIMIT_RTPRIO" => Resource::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => Resource::RLIMIT_RTTIME,
        "RLIMIT_SIGPENDING" => Resource::RLIMIT_SIGPENDING,
        "RLIMIT_STACK" => Resource::RLIMIT_STACK,
        _ => return None,
    })
}

/// The five capability sets of a spec, parsed; unknown names are warned about and skipped
/// (a spec written for a newer kernel must still run here).
struct CapSets {
    bounding: CapsHashSet,
    effective: CapsHashSet,
    permitted: CapsHashSet,
    inheritable: CapsHashSet,
    ambient: CapsHashSet,
}

impl CapSets {
    fn parse(c: &Capabilities) -> CapSets {
        let p = |names: &[String]| {
            let (set, unknown) = parse_capabilities(names);
            for u in unknown {
                tracing::warn!(capability = %u, "unknown capability ignored");
            }
            set
        };
        CapSets {
            bounding: p(&c.bounding),
            effective: p(&c.effective),
            permitted: p(&c.permitted),
            inheritable: p(&c.inheritable),
            ambient: p(&c.ambient),
        }
    }
}

/// Becomes who the process should be, in the order the kernel allows:
/// rlimits (raising a hard limit needs `CAP_SYS_RESOURCE`, so before any drop); the bounding
/// set (dropping needs `CAP_SETPCAP`); `PR_SET_KEEPCAPS` so the permitted set survives the
/// switch away from uid 0; groups, gid, uid; then effective, inheritable, permitted (effective
/// first: a set may only shrink to a superset of what depends on it) and ambient; keepcaps off;
/// `no_new_privs` last.
pub fn apply_identity(sys: &dyn Syscall, p: &Process) -> Result<(), Error> {
    for r in &p.rlimits {
        let res = rlimit(&r.kind).ok_or_else(|| Error::InvalidSpec(format!("unknown rlimit {}", r.kind)))?;
        sys.setrlimit(res, r.soft, r.hard)
            .map_err(sys_err(format!("setrlimit {}", r.kind)))?;
    }
    let caps = p.capabilities.as_ref().map(CapSets::parse);
    if let Some(c) = &caps {
        sys.set_capabilities(CapabilitySet::Bounding, &c.bounding)
            .map_err(sys_err("drop bounding capabilities"))?;
    }
    sys.set_keepcaps(true).map_err(sys_err("PR_SET_KEEPCAPS"))?;
    sys.setgroups(&p.user.additional_gids).map_err(sys_err("setgroups"))?;
    sys.setresgid(p.user.gid)
        .map_err(sys_err(format!("setresgid {}", p.user.gid)))?;
    sys.setresuid(p.user.uid)
        .map_err(sys_err(format!("setresuid {}", p.user.uid)))?;
    if let Some(c) = &caps {
        for (set, value, name) in [
            (CapabilitySet::Effective, &c.effective, "effective"),
            (CapabilitySet::Inheritable, &c.inheritable, "inheritable"),
            (CapabilitySet::Permitted, &c.permitted, "permitted"),
            (CapabilitySet::Ambient, &c.ambient, "ambient"),
        ] {
            sys.set_capabilities(set, value)
                .map_err(sys_err(format!("set {name} capabilities")))?;
        }
    }
    sys.set_keepcaps(false).map_err(sys_err("PR_SET_KEEPCAPS"))?;
    if p.no_new_privileges {
        sys.set_no_new_privs().map_err(sys_err("PR_SET_NO_NEW_PRIVS"))?;
    }
    Ok(())
}

/// The last steps before exec that belong to the process itself: its own session with the
/// terminal on stdin as controlling terminal (when `terminal`), and its working directory.
pub fn enter_session(sys: &dyn Syscall, p: &Process, stdin: BorrowedFd<'_>) -> Result<(), Error> {
    if p.terminal {
        sys.setsid().map_err(sys_err("setsid"))?;
        sys.set_controlling_terminal(stdin)
            .map_err(sys_err("make stdin the controlling terminal"))?;
    }
    let cwd = if p.cwd.is_empty() { "/" } else { p.cwd.as_str() };
    sys.chdir(Path::new(cwd)).map_err(sys_err(format!("chdir {cwd}")))
}

/// Why the program could not be started, with the exit code it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecFailure {
    /// 127 (not found) or 126 (found, not executable).
    pub code: i32,
    /// `exec "foo": executable file not found in $PATH`.
    pub message: String,
}

/// Finds `arg0` the way execvp would, but in the spec's PATH (the spec's environment is the
/// whole environment; ours is not the container's). A name with a `/` is used as is.
pub fn lookup(arg0: &str, env: &[String]) -> Result<PathBuf, ExecFailure> {
    if arg0.contains('/') {
        return Ok(PathBuf::from(arg0));
    }
    let path = env.iter().find_map(|e| e.strip_prefix("PATH=")).unwrap_or(DEFAULT_PATH);
    for dir in path.split(':') {
        let candidate = Path::new(if dir.is_empty() { "." } else { dir }).join(arg0);
        if let Ok(m) = fs::metadata(&candidate) {
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
        }
    }
    Err(ExecFailure {
        code: EXIT_NOT_FOUND,
        message: format!("exec {arg0:?}: executable file not found in $PATH"),
    })
}

/// Replaces this process with the spec's program. Only returns on failure.
pub fn exec(p: &Process) -> ExecFailure {
    let Some(arg0) = p.args.first() else {
        return ExecFailure {
            code: EXIT_SETUP_FAILED,
            message: "process.args is empty".into(),
        };
    };
    let prog = match lookup(arg0, &p.env) {
        Ok(prog) => prog,
        Err(f) => return f,
    };
    let nul = |what: &str| ExecFailure {
        code: EXIT_SETUP_FAILED,
        message: format!("{what} contains a NUL byte"),
    };
    let Ok(path) = CString::new(prog.as_os_str().as_bytes()) else {
        return nul("the program path");
    };
    let Ok(args) = p
        .args
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
    else {
        return nul("process.args");
    };
    let Ok(env) = p
        .env
        .iter()
        .map(|e| CString::new(e.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
    else {
        return nul("process.env");
    };
    let errno = match nix::unistd::execve(&path, &args, &env) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    let (code, why) = match errno {
        nix::errno::Errno::ENOENT => (EXIT_NOT_FOUND, "no such file or directory".to_string()),
        nix::errno::Errno::EACCES | nix::errno::Errno::EPERM => (EXIT_CANNOT_EXECUTE, "permission denied".to_string()),
        e => (EXIT_CANNOT_EXECUTE, e.desc().to_lowercase()),
    };
    ExecFailure {
        code,
        message: format!("exec {arg0:?}: {why}"),
    }
}
