//! The embedded container runtime: a small runc.
//!
//! [`run`] starts the container of a bundle in the foreground and returns its exit status;
//! [`exec`] starts one more process in a running container. Both are meant for a fresh,
//! single-threaded process (berth-node's hidden `__init` / `__exec` subcommands): they fork,
//! and only a single-threaded process can fork without inheriting locks held by threads that
//! do not exist in the child. They refuse to run otherwise.
//!
//! # How `run` proceeds
//!
//! ```text
//! runner (host namespaces)                      container init (pid 1 of a new pid ns)
//! ─────────────────────────                     ─────────────────────────────────────
//! load config.json, create cgroup, limits
//! block forwarded signals + SIGCHLD
//! unshare(CLONE_NEWPID)  (affects children)
//! fork ───────────────────────────────────────▶ wait on the start pipe
//! add the child to the cgroup
//! release the start pipe ─────────────────────▶ setns/unshare mnt, uts, ipc, net, cgroup
//!                                               rootfs: propagation, mounts, devices,
//!                                                 pivot_root, ro/masked paths, ro root
//!                                               hostname, rlimits, user, caps, nnp
//! wait for the ready pipe to close ◀──────────  setsid+TIOCSCTTY (terminal), chdir, exec
//! write the pid file                             (exec closes the ready pipe)
//! sigwait: forward TERM/INT/HUP/QUIT/USR1/2,
//!          reap the child on SIGCHLD
//! kill what is left in the cgroup, remove it
//! return code, or 128+signal
//! ```
//!
//! So the pid file appears once the container's namespaces and mounts exist: [`exec`] may
//! join the pid it names at once.
//!
//! The runner stays in the host's mount namespace on purpose: `pivot_root` moves the root of
//! every process of a mount namespace, and the runner must still reach the host's
//! `/sys/fs/cgroup` and the pid file afterwards.
//!
//! Failures before the fork are returned as [`Error`]. In the container they cannot be
//! returned: the child prints one line (`berth-node: <cause>`) and exits 125 (setup), 126
//! (found but not executable) or 127 (not found), which `run` returns like any exit status.
//!
//! With the annotation `berth.init` = `true` (docker's `--init`), pid 1 forks once more and
//! stays as a tiny init: it reaps orphans, forwards signals to the main process and exits
//! with its status. Without it the container's process is pid 1 and reaps nothing, as in
//! docker.

mod process;
mod rootfs;

pub use process::{
    apply_identity, enter_session, lookup, ExecFailure, DEFAULT_PATH, EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND,
    EXIT_SETUP_FAILED,
};
pub use rootfs::{finish_rootfs, prepare_rootfs, CgroupView};

use crate::cgroup::{self, CgroupManager};
use crate::spec::{Process, Spec};
use crate::sys::{Linux, Syscall};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Where cgroup filesystems are mounted on a host.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The annotation asking for the tiny init (docker's `--init`).
pub const INIT_ANNOTATION: &str = "berth.init";

/// Signals the runner (and the tiny init) pass on to the container's process.
pub const FORWARDED_SIGNALS: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Why a container could not be started (or waited for).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bundle's `config.json` is missing or unreadable.
    #[error("bundle {}: {source}", bundle.display())]
    Bundle {
        /// The bundle directory.
        bundle: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The spec asks for something invalid or unsupported.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// The container's cgroup.
    #[error(transparent)]
    Cgroup(#[from] cgroup::Error),
    /// A system call (or file operation) failed.
    #[error("{op}: {source}")]
    Sys {
        /// What was being done.
        op: String,
        /// The cause.
        source: io::Error,
    },
    /// `run`/`exec` called from a process with more than one thread.
    #[error("must be called from a single-threaded process (this one has {threads} threads)")]
    Threaded {
        /// How many threads the process had.
        threads: usize,
    },
}

/// An `Error::Sys` maker for `map_err`.
pub(crate) fn sys_err(op: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let op = op.into();
    move |source| Error::Sys { op, source }
}

fn errno_err(op: impl Into<String>) -> impl FnOnce(Errno) -> Error {
    let f = sys_err(op);
    move |e| f(io::Error::from(e))
}

/// Runs the container of `<bundle>/config.json` in the foreground and returns its exit
/// status (its code, or 128 + the signal that killed it). Must be called in a fresh
/// single-threaded process. The rootfs (`root.path`, relative to the bundle) must already be
/// mounted. The cgroup is `linux.cgroupsPath`, or `berth/<id>` when the spec has none; it is
/// emptied and removed before returning.
pub fn run(bundle: &Path, id: &str, pid_file: Option<&Path>) -> Result<i32, Error> {
    let _span = tracing::info_span!("run", id).entered();
    ensure_single_threaded()?;
    let spec = Spec::load(bundle).map_err(|source| Error::Bundle {
        bundle: bundle.to_path_buf(),
        source,
    })?;
    let plan = NamespacePlan::from_spec(&spec)?;
    if spec.process.args.is_empty() {
        return Err(Error::InvalidSpec("process.args is empty".into()));
    }
    if spec.hostname.is_some() && !plan.has(CloneFlags::CLONE_NEWUTS) {
        return Err(Error::InvalidSpec("hostname set without a uts namespace".into()));
    }
    let rootfs = bundle.join(&spec.root.path);
    let rootfs = rootfs
        .canonicalize()
        .map_err(sys_err(format!("rootfs {}", rootfs.display())))?;
    let cg_path = spec.linux.cgroups_path.clone().unwrap_or_else(|| format!("berth/{id}"));
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(sys_err("read /proc/self/mountinfo"))?;
    let cg = cgroup::manager_for(&cg_path, Path::new(CGROUP_ROOT), &mountinfo)?;
    let result = cg
        .create()
        .map_err(Error::from)
        .and_then(|()| start_container(&spec, &plan, &rootfs, cg.as_ref(), pid_file));
    // pid 1's exit killed everything in its pid namespace; without one, stragglers remain.
    if let Err(e) = cg.kill_all(Signal::SIGKILL) {
        tracing::warn!(%e, "could not kill what was left in the cgroup");
    }
    if let Err(e) = cg.remove() {
        tracing::warn!(%e, "could not remove the cgroup");
    }
    result
}

fn start_container(
    spec: &Spec,
    plan: &NamespacePlan,
    rootfs: &Path,
    cg: &dyn CgroupManager,
    pid_file: Option<&Path>,
) -> Result<i32, Error> {
    if let Some(r) = &spec.linux.resources {
        cg.apply(r)?;
    }
    let view = CgroupView {
        version: Some(cg.version()),
        dirs: cg.dirs(),
    };
    let init = spec.annotations.get(INIT_ANNOTATION).is_some_and(|v| v == "true");
    // Compiled here, in the runner, so that a bad profile is an error before anything starts.
    let filters = seccomp_filters(spec.linux.seccomp.as_ref())?;
    let signals = BlockedSignals::block()?;
    match &plan.pid {
        PidNs::Host => {}
        PidNs::New => Linux
            .unshare(CloneFlags::CLONE_NEWPID)
            .map_err(sys_err("unshare pid namespace"))?,
        PidNs::Join(p) => join(&Linux, p, CloneFlags::CLONE_NEWPID)?,
    }
    let child = spawn(Some(cg), pid_file, |ready| {
        container_main(spec, plan, rootfs, &view, init, &filters, &signals, ready)
    })?;
    wait_forwarding(child, false)
}

/// Runs `process` inside the running container whose init has host pid `target`: joins its
/// ipc, uts, net, cgroup, pid and mount namespaces (those that differ from ours) and, with
/// `cgroups_path`, its cgroup; in the foreground; returns the exit status as [`run`] does.
/// Must be called in a fresh single-threaded process.
pub fn exec(
    target: i32,
    cgroups_path: Option<&str>,
    process: &Process,
    seccomp: Option<&crate::spec::Seccomp>,
    pid_file: Option<&Path>,
) -> Result<i32, Error> {
    let _span = tracing::info_span!("exec", target).entered();
    ensure_single_threaded()?;
    if process.args.is_empty() {
        return Err(Error::InvalidSpec("process.args is empty".into()));
    }
    // Opened now, in the host's view of /proc; the child joins them (mount last: after it,
    // paths resolve inside the container).
    let mut namespaces = Vec::new();
    for (name, flag) in [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ] {
        let theirs = format!("/proc/{target}/ns/{name}");
        let ours = std::fs::read_link(format!("/proc/self/ns/{name}")).ok();
        match std::fs::read_link(&theirs) {
            Ok(id) if Some(&id) == ours.as_ref() => continue,
            Ok(_) => {}
            Err(e) if name == "cgroup" && e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(sys_err(format!("container process {target}: {theirs}"))(e)),
        }
        let f = File::open(&theirs).map_err(sys_err(format!("open {theirs}")))?;
        namespaces.push((OwnedFd::from(f), flag));
    }
    let cg = match cgroups_path {
        Some(p) => {
            let mi = std::fs::read_to_string("/proc/self/mountinfo").map_err(sys_err("read /proc/self/mountinfo"))?;
            Some(cgroup::manager_for(p, Path::new(CGROUP_ROOT), &mi)?)
        }
        None => None,
    };
    let filters = seccomp_filters(seccomp)?;
    let signals = BlockedSignals::block()?;
    // The pid namespace only applies to children: join it here, before the fork.
    if let Some((fd, flag)) = namespaces.iter().find(|(_, f)| *f == CloneFlags::CLONE_NEWPID) {
        Linux.setns(fd.as_fd(), *flag).map_err(sys_err("join pid namespace"))?;
    }
    // `_ready` stays open until the exec (close-on-exec): see `spawn`.
    let child = spawn(cg.as_deref(), pid_file, |_ready| {
        let sys = Linux;
        let r = (|| -> Result<(), Error> {
            set_pdeathsig()?;
            for (fd, flag) in namespaces.iter().filter(|(_, f)| *f != CloneFlags::CLONE_NEWPID) {
                sys.setns(fd.as_fd(), *flag)
                    .map_err(sys_err(format!("join {} namespace", ns_name(*flag))))?;
            }
            drop(namespaces);
            apply_identity(&sys, process)?;
            enter_session(&sys, process, std::io::stdin().as_fd())?;
            Ok(())
        })();
        if let Err(e) = r {
            die(EXIT_SETUP_FAILED, &e);
        }
        exec_now(&sys, process, &filters, &signals)
    })?;
    wait_forwarding(child, false)
}

fn ns_name(flag: CloneFlags) -> &'static str {
    match flag {
        f if f == CloneFlags::CLONE_NEWIPC => "ipc",
        f if f == CloneFlags::CLONE_NEWUTS => "uts",
        f if f == CloneFlags::CLONE_NEWNET => "network",
        f if f == CloneFlags::CLONE_NEWCGROUP => "cgroup",
        f if f == CloneFlags::CLONE_NEWPID => "pid",
        f if f == CloneFlags::CLONE_NEWNS => "mount",
        _ => "unknown",
    }
}

/// Whether a pid namespace is created, joined, or the host's.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PidNs {
    Host,
    New,
    Join(String),
}

/// The spec's namespaces, sorted by when they are entered.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NamespacePlan {
    pid: PidNs,
    /// Joined in the child, before `unshare`.
    join: Vec<(CloneFlags, String)>,
    /// Created in the child.
    unshare: CloneFlags,
}

impl NamespacePlan {
    fn from_spec(spec: &Spec) -> Result<NamespacePlan, Error> {
        let mut plan = NamespacePlan {
            pid: PidNs::Host,
            join: Vec::new(),
            unshare: CloneFlags::empty(),
        };
        for ns in &spec.linux.namespaces {
            let flag = match ns.kind.as_str() {
                "pid" => CloneFlags::CLONE_NEWPID,
                "network" | "net" => CloneFlags::CLONE_NEWNET,
                "mount" | "mnt" => CloneFlags::CLONE_NEWNS,
                "ipc" => CloneFlags::CLONE_NEWIPC,
                "uts" => CloneFlags::CLONE_NEWUTS,
                "cgroup" => CloneFlags::CLONE_NEWCGROUP,
                "user" => {
                    return Err(Error::InvalidSpec(
                        "user namespaces are not supported (the spec carries no uid/gid mappings)".into(),
                    ))
                }
                other => return Err(Error::InvalidSpec(format!("unknown namespace {other:?}"))),
            };
            match (&ns.path, flag) {
                (None, CloneFlags::CLONE_NEWPID) => plan.pid = PidNs::New,
                (Some(p), CloneFlags::CLONE_NEWPID) => plan.pid = PidNs::Join(p.clone()),
                (Some(_), CloneFlags::CLONE_NEWNS) => {
                    return Err(Error::InvalidSpec(
                        "joining an existing mount namespace is not supported: the rootfs is set up in a new one"
                            .into(),
                    ))
                }
                (None, f) => plan.unshare |= f,
                (Some(p), f) => plan.join.push((f, p.clone())),
            }
        }
        if !plan.unshare.contains(CloneFlags::CLONE_NEWNS) {
            return Err(Error::InvalidSpec("a mount namespace is required".into()));
        }
        Ok(plan)
    }

    fn has(&self, flag: CloneFlags) -> bool {
        self.unshare.contains(flag) || self.join.iter().any(|(f, _)| *f == flag)
    }
}

fn join(sys: &dyn Syscall, path: &str, flag: CloneFlags) -> Result<(), Error> {
    let f = File::open(path).map_err(sys_err(format!("open namespace {path}")))?;
    sys.setns(f.as_fd(), flag)
        .map_err(sys_err(format!("join {} namespace {path}", ns_name(flag))))
}

/// The container's pid 1: everything from namespaces to exec. Never returns.
#[allow(clippy::too_many_arguments)] // each is one piece of the runner's prepared state
fn container_main(
    spec: &Spec,
    plan: &NamespacePlan,
    rootfs: &Path,
    cgroup: &CgroupView,
    init: bool,
    filters: &[crate::seccomp::Program],
    signals: &BlockedSignals,
    ready: OwnedFd,
) -> ! {
    let sys = Linux;
    if let Err(e) = setup_container(&sys, spec, plan, rootfs, cgroup) {
        die(EXIT_SETUP_FAILED, &e);
    }
    if !init {
        if let Err(e) = enter_session(&sys, &spec.process, std::io::stdin().as_fd()) {
            die(EXIT_SETUP_FAILED, &e);
        }
        exec_now(&sys, &spec.process, filters, signals)
    }
    // The tiny init: fork the real process, then reap and forward until it exits.
    let main = match fork_process() {
        Ok(ForkResult::Child) => {
            if let Err(e) = enter_session(&sys, &spec.process, std::io::stdin().as_fd()) {
                die(EXIT_SETUP_FAILED, &e);
            }
            exec_now(&sys, &spec.process, filters, signals)
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => die(EXIT_SETUP_FAILED, &e),
    };
    // Started means the real process has exec'd: only its copy may hold `ready` open now.
    drop(ready);
    match wait_forwarding(main, true) {
        Ok(code) => exit(code),
        Err(e) => die(EXIT_SETUP_FAILED, &e),
    }
}

fn setup_container(
    sys: &dyn Syscall,
    spec: &Spec,
    plan: &NamespacePlan,
    rootfs: &Path,
    cgroup: &CgroupView,
) -> Result<(), Error> {
    set_pdeathsig()?;
    // Modes below are exact (device nodes 0666, mount points 0755); the process gets 022.
    nix::sys::stat::umask(Mode::empty());
    for (flag, path) in &plan.join {
        join(sys, path, *flag)?;
    }
    sys.unshare(plan.unshare).map_err(sys_err("unshare namespaces"))?;
    let console = if spec.process.terminal {
        Some(
            nix::unistd::ttyname(std::io::stdin().as_fd())
                .map_err(errno_err("process.terminal: stdin is not a terminal"))?,
        )
    } else {
        None
    };
    prepare_rootfs(sys, spec, rootfs, cgroup, console.as_deref())?;
    finish_rootfs(sys, spec, Path::new("/"))?;
    if let Some(h) = &spec.hostname {
        sys.sethostname(h).map_err(sys_err(format!("sethostname {h}")))?;
    }
    nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
    apply_identity(sys, &spec.process)
}

/// Installs the seccomp filters (the last step: nothing of ours runs under them but the
/// signal mask restore and `execve`, both allowed by any profile that lets a program start),
/// restores the signal mask and execs; on failure prints the cause and exits 125/126/127.
fn exec_now(sys: &dyn Syscall, process: &Process, filters: &[crate::seccomp::Program], signals: &BlockedSignals) -> ! {
    if let Err(e) = install_seccomp(sys, filters) {
        die(EXIT_SETUP_FAILED, &e);
    }
    if let Err(e) = signals.restore() {
        die(EXIT_SETUP_FAILED, &e);
    }
    let f = process::exec(process);
    die(f.code, &f.message)
}

/// The BPF programs for `linux.seccomp` (none when unconfined).
fn seccomp_filters(s: Option<&crate::spec::Seccomp>) -> Result<Vec<crate::seccomp::Program>, Error> {
    match s {
        None => Ok(Vec::new()),
        Some(s) => crate::seccomp::compile(s).map_err(|e| Error::InvalidSpec(e.to_string())),
    }
}

/// Installs `filters` in order (see [`crate::seccomp`] for why there may be several).
pub fn install_seccomp(sys: &dyn Syscall, filters: &[crate::seccomp::Program]) -> Result<(), Error> {
    for f in filters {
        sys.seccomp(f).map_err(sys_err("install the seccomp filter"))?;
    }
    Ok(())
}

/// Prints `berth-node: <cause>` and exits at once.
fn die(code: i32, cause: &dyn std::fmt::Display) -> ! {
    let _ = writeln!(
        io::stderr(),
        "berth-node: {}",
        crate::escape_controls(&cause.to_string())
    );
    exit(code)
}

/// Exits the forked process (`std::process::exit`: flushes our stdio, runs no destructors of
/// state copied from the parent).
fn exit(code: i32) -> ! {
    std::process::exit(code)
}

/// The container dies with its runner: if the runner is killed outright (SIGKILL), nobody
/// would wait for the container, empty its cgroup or report its status.
fn set_pdeathsig() -> Result<(), Error> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(errno_err("PR_SET_PDEATHSIG"))
}

/// Forks the container's first process and returns its pid once it is running the
/// program (or has died trying).
///
/// Two pipes order the start: the child waits on `start` until the parent has put it in the
/// cgroup, so nothing it does escapes accounting; the parent then waits on `ready`, whose
/// write end the child keeps open (close-on-exec) until its `execve` succeeds or it exits, so
/// the pid file is written only when the container's namespaces and mounts exist: whoever
/// reads the pid file may `exec` into it at once. `child` receives that write end (the tiny
/// init must close its copy after forking the real process).
fn spawn(cg: Option<&dyn CgroupManager>, pid_file: Option<&Path>, child: impl FnOnce(OwnedFd)) -> Result<Pid, Error> {
    let (start_rx, start_tx) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(errno_err("pipe"))?;
    let (ready_rx, ready_tx) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(errno_err("pipe"))?;
    match fork_process()? {
        ForkResult::Child => {
            drop(start_tx);
            drop(ready_rx);
            let mut b = [0u8; 1];
            match nix::unistd::read(&start_rx, &mut b) {
                Ok(1) => {}
                _ => exit(EXIT_SETUP_FAILED), // the runner gave up (and said why)
            }
            drop(start_rx);
            child(ready_tx);
            // `child` execs or exits; this is only reached if it returned by mistake.
            exit(EXIT_SETUP_FAILED)
        }
        ForkResult::Parent { child } => {
            drop(start_rx);
            drop(ready_tx);
            let started = (|| -> Result<(), Error> {
                if let Some(cg) = cg {
                    cg.add_task(child.as_raw())?;
                }
                nix::unistd::write(&start_tx, b"1").map_err(errno_err("release the container"))?;
                drop(start_tx);
                wait_for_eof(&ready_rx)?;
                if let Some(p) = pid_file {
                    write_pid_file(p, child.as_raw())?;
                }
                Ok(())
            })();
            if let Err(e) = started {
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(child, None);
                return Err(e);
            }
            Ok(child)
        }
    }
}

/// Reads until every write end of the pipe is closed.
fn wait_for_eof(rx: &OwnedFd) -> Result<(), Error> {
    let mut b = [0u8; 16];
    loop {
        match nix::unistd::read(rx, &mut b) {
            Ok(0) => return Ok(()),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(errno_err("wait for the container to start")(e)),
        }
    }
}

#[allow(unsafe_code)]
fn fork_process() -> Result<ForkResult, Error> {
    // SAFETY: callers are single-threaded (checked by `ensure_single_threaded` on entry to
    // `run`/`exec`; the tiny init is a child of that process), so the child is a complete copy
    // of the only thread and no lock can be held by a thread that does not exist there.
    unsafe { nix::unistd::fork() }.map_err(errno_err("fork"))
}

/// Writes the pid through a temporary file and a rename: whoever polls for the pid file
/// reads either nothing or the whole pid.
fn write_pid_file(path: &Path, pid: i32) -> Result<(), Error> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, pid.to_string()).map_err(sys_err(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(sys_err(format!("rename to {}", path.display())))
}

fn ensure_single_threaded() -> Result<(), Error> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(sys_err("read /proc/self/status"))?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(1);
    if threads != 1 {
        return Err(Error::Threaded { threads });
    }
    Ok(())
}

/// The forwarded signals and SIGCHLD, blocked so that they are taken with `sigwait` (no
/// handlers, nothing async), and the mask to restore in the container process before exec.
///
/// The runner never unblocks them: a SIGTERM that arrives after the container has exited
/// must not kill the runner before it has reported the status (the caller exits right after
/// [`run`] / [`exec`] return).
struct BlockedSignals {
    previous: SigSet,
}

impl BlockedSignals {
    fn block() -> Result<BlockedSignals, Error> {
        reset_sigchld()?;
        let previous = waited_signals()
            .thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK)
            .map_err(errno_err("block signals"))?;
        Ok(BlockedSignals { previous })
    }

    /// The container process starts with no signal blocked, whatever the runner inherited
    /// (a child inherits its parent's mask through exec, and a supervisor may block some).
    fn restore(&self) -> Result<(), Error> {
        let _ = &self.previous;
        SigSet::empty()
            .thread_set_mask()
            .map_err(errno_err("restore signal mask"))
    }
}

/// [`FORWARDED_SIGNALS`] and SIGCHLD.
fn waited_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in FORWARDED_SIGNALS {
        set.add(*s);
    }
    set.add(Signal::SIGCHLD);
    set
}

/// SIGCHLD must not be ignored: an ignored SIGCHLD makes the kernel reap children itself, and
/// `waitpid` would never see the container's status.
#[allow(unsafe_code)]
fn reset_sigchld() -> Result<(), Error> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler};
    let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: installs the default disposition; no handler code of ours runs in signal context.
    unsafe { nix::sys::signal::sigaction(Signal::SIGCHLD, &dfl) }
        .map(drop)
        .map_err(errno_err("reset SIGCHLD"))
}

/// Waits for `child` with the signals of [`BlockedSignals`] blocked: forwards each forwarded
/// signal to it and returns its exit code (or 128 + signal) when it ends. With `reap_all`
/// (the tiny init) every other child is reaped too.
fn wait_forwarding(child: Pid, reap_all: bool) -> Result<i32, Error> {
    let set = waited_signals();
    loop {
        // Reap first: the child may have exited before we got here (SIGCHLD then pending).
        loop {
            let which = if reap_all { None } else { Some(child) };
            match nix::sys::wait::waitpid(which, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == child => return Ok(code),
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => return Ok(128 + sig as i32),
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(errno_err(format!("wait for {child}"))(e)),
            }
        }
        let sig = set.wait().map_err(errno_err("sigwait"))?;
        if sig != Signal::SIGCHLD {
            match nix::sys::signal::kill(child, sig) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => tracing::warn!(%e, signal = %sig, "could not forward signal"),
            }
        }
    }
}

#[cfg(test)]
mod tests;
