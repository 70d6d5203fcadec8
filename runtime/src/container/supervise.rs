//! The supervisor: starts the runtime on a bundle, attaches or logs the container's stdio,
//! forwards signals, records state, and cleans up when the container exits.
//!
//! The same code serves a foreground `run` (the CLI process supervises, and also copies the
//! output to the terminal) and a detached one (a `berth-node __supervise` process that
//! outlives the CLI, like podman's conmon). Namespace setup never happens here: the runtime
//! is a separate process (`berth-node __init`, or `runc run`), started with fork + exec.

use super::{now, Container, State, Status};
use crate::error::{Error, Result};
use crate::node::Node;
use nix::sys::signal::{SigSet, Signal};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Formats a time as RFC 3339 with nanoseconds in UTC, as docker's json-file log does.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Appends docker json-file lines: one per line of output, partial lines as they come.
#[derive(Clone)]
pub struct LogWriter(Arc<Mutex<File>>);

impl LogWriter {
    /// Opens (appending) the log at `path`.
    pub fn open(path: &Path) -> Result<LogWriter> {
        let f = File::options()
            .create(true)
            .append(true)
            .open(path)
            .map_err(Error::io(path))?;
        Ok(LogWriter(Arc::new(Mutex::new(f))))
    }

    fn write(&self, stream: &str, bytes: &[u8]) {
        let time = rfc3339(std::time::SystemTime::now());
        let mut out = Vec::with_capacity(bytes.len() + 64);
        for line in bytes.split_inclusive(|b| *b == b'\n') {
            let rec = serde_json::json!({
                "log": String::from_utf8_lossy(line),
                "stream": stream,
                "time": time,
            });
            out.extend_from_slice(rec.to_string().as_bytes());
            out.push(b'\n');
        }
        if let Ok(mut f) = self.0.lock() {
            let _ = f.write_all(&out);
        }
    }
}

/// Copies `src` to `echo` (the terminal) and `log`, until EOF.
fn pump(mut src: File, mut echo: Option<Box<dyn Write + Send>>, log: Option<LogWriter>, stream: &'static str) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // A pty's master reads EIO once the last slave closes: that is its EOF.
            Err(_) => break,
        };
        if let Some(w) = echo.as_mut() {
            if w.write_all(&buf[..n]).and_then(|_| w.flush()).is_err() {
                echo = None;
            }
        }
        if let Some(l) = &log {
            l.write(stream, &buf[..n]);
        }
    }
}

/// How the container's stdio is wired.
pub struct Stdio3 {
    /// Copy our stdin into the container.
    pub stdin: bool,
    /// Echo its output to our stdout/stderr.
    pub echo: bool,
    /// A pseudo-terminal instead of pipes.
    pub tty: bool,
    /// Where output is logged.
    pub log: Option<LogWriter>,
}

/// Our terminal in raw mode while attached to a container's terminal; restored on drop.
struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    fn enter(on: bool) -> RawMode {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        if !on || !nix::unistd::isatty(stdin.as_fd()).unwrap_or(false) {
            return RawMode(None);
        }
        let Ok(orig) = tcgetattr(stdin.as_fd()) else {
            return RawMode(None);
        };
        let mut raw = orig.clone();
        cfmakeraw(&mut raw);
        let _ = tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw);
        RawMode(Some(orig))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(std::io::stdin().as_fd(), nix::sys::termios::SetArg::TCSANOW, t);
        }
    }
}

/// Signals a supervisor forwards to the runtime (which forwards them to the container).
fn forwarded() -> SigSet {
    let mut s = SigSet::empty();
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
    ] {
        s.add(sig);
    }
    s
}

/// The window-size ioctls (the macros make public functions; this module keeps them ours).
mod ioctl {
    #![allow(missing_docs)]
    nix::ioctl_read_bad!(tiocgwinsz, libc::TIOCGWINSZ, libc::winsize);
    nix::ioctl_write_ptr_bad!(tiocswinsz, libc::TIOCSWINSZ, libc::winsize);
}
use ioctl::{tiocgwinsz, tiocswinsz};

/// Copies the window size of our terminal to the container's.
#[allow(unsafe_code)]
fn sync_winsize(master: &OwnedFd) {
    use std::os::fd::AsRawFd as _;
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: both ioctls take a pointer to a `winsize` that lives across the call; the fds
    // are open (stdin is ours; `master` is borrowed). A non-terminal stdin fails with ENOTTY.
    unsafe {
        if tiocgwinsz(std::io::stdin().as_raw_fd(), &mut ws).is_ok() {
            let _ = tiocswinsz(master.as_raw_fd(), &ws);
        }
    }
}

/// Spawns `cmd` with stdio wired per `io`, calls `started` with the spawned process id,
/// forwards signals to it, and returns its exit status once it and its output are done.
pub fn run_attached(mut cmd: Command, io: Stdio3, started: impl FnOnce(u32) -> Result<()>) -> Result<i32> {
    cmd.process_group(0);
    let mut master: Option<OwnedFd> = None;
    if io.tty {
        let pty = nix::pty::openpty(None, None).map_err(|e| Error::Runtime(format!("allocating a terminal: {e}")))?;
        let slave = pty.slave;
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| Error::Runtime(format!("terminal: {e}")));
        cmd.stdin(Stdio::from(dup(&slave)?));
        cmd.stdout(Stdio::from(dup(&slave)?));
        cmd.stderr(Stdio::from(slave));
        sync_winsize(&pty.master);
        master = Some(pty.master);
    } else {
        cmd.stdin(if io.stdin { Stdio::piped() } else { Stdio::null() });
        cmd.stdout(Stdio::piped());
        cmd.stderr(Stdio::piped());
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Runtime(format!("starting the runtime {:?}: {e}", cmd.get_program())))?;
    // Our copies of the terminal's slave side must close, or its master never sees EOF.
    drop(cmd);
    // Blocked only now: a child inherits its parent's signal mask through exec, and the
    // container must start with none blocked. Blocked before the threads below start, so
    // they all inherit the mask and one of them takes the signals with sigwait.
    let sigs = forwarded();
    let _ = sigs.thread_block();
    let pid = child.id();
    let _raw = RawMode::enter(io.tty && io.stdin);
    let mut pumps = Vec::new();
    match &master {
        Some(m) => {
            let reader = File::from(m.try_clone().map_err(|e| Error::Runtime(e.to_string()))?);
            let echo: Option<Box<dyn Write + Send>> = io.echo.then(|| Box::new(std::io::stdout()) as _);
            let log = io.log.clone();
            pumps.push(std::thread::spawn(move || pump(reader, echo, log, "stdout")));
            if io.stdin {
                let mut writer = File::from(m.try_clone().map_err(|e| Error::Runtime(e.to_string()))?);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut std::io::stdin().lock(), &mut writer);
                });
            }
        }
        None => {
            if let Some(out) = child.stdout.take() {
                let echo: Option<Box<dyn Write + Send>> = io.echo.then(|| Box::new(std::io::stdout()) as _);
                let log = io.log.clone();
                pumps.push(std::thread::spawn(move || {
                    pump(File::from(OwnedFd::from(out)), echo, log, "stdout")
                }));
            }
            if let Some(err) = child.stderr.take() {
                let echo: Option<Box<dyn Write + Send>> = io.echo.then(|| Box::new(std::io::stderr()) as _);
                let log = io.log.clone();
                pumps.push(std::thread::spawn(move || {
                    pump(File::from(OwnedFd::from(err)), echo, log, "stderr")
                }));
            }
            if let Some(mut w) = child.stdin.take() {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut std::io::stdin().lock(), &mut w);
                });
            }
        }
    }
    {
        let master = master.as_ref().and_then(|m| m.try_clone().ok());
        std::thread::spawn(move || loop {
            let Ok(sig) = sigs.wait() else { return };
            if sig == Signal::SIGWINCH {
                if let Some(m) = &master {
                    sync_winsize(m);
                }
                continue;
            }
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
        });
    }
    if let Err(e) = started(pid) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    let status = child
        .wait()
        .map_err(|e| Error::Runtime(format!("waiting for the runtime: {e}")))?;
    for p in pumps {
        let _ = p.join();
    }
    Ok(exit_code(status))
}

/// docker's exit code for a process status: its code, or 128 + the signal that ended it.
pub fn exit_code(s: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    s.code().or_else(|| s.signal().map(|n| 128 + n)).unwrap_or(125)
}

/// A command running this very binary: `/proc/self/exe` names the file this process was
/// started from even after it was replaced on disk (an upgrade while containers run).
pub fn self_command() -> Command {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0("berth-node");
    cmd
}

/// The command that runs a bundle in the foreground: the embedded runtime or an OCI
/// runtime binary, both exiting with the container's status.
fn runtime_command(node: &Node, c: &Container, pid_file: &Path) -> Result<Command> {
    match &c.record.runtime {
        None => {
            let mut cmd = self_command();
            cmd.arg("--root")
                .arg(&node.root)
                .arg("__init")
                .arg("--bundle")
                .arg(&c.dir)
                .arg("--id")
                .arg(&c.record.id)
                .arg("--pid-file")
                .arg(pid_file);
            Ok(cmd)
        }
        Some(rt) => {
            let mut cmd = Command::new(rt);
            cmd.arg("--root")
                .arg(node.root.join("runc"))
                .arg("run")
                .arg("--bundle")
                .arg(&c.dir)
                .arg("--pid-file")
                .arg(pid_file)
                .arg(&c.record.id);
            Ok(cmd)
        }
    }
}

/// Reads a pid file once it exists; `None` while the runtime has not written it yet.
fn read_pid(p: &Path) -> Option<i32> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// Supervises container `c` to its end; returns its exit status. With `attach`, stdio is
/// the caller's (a foreground `run`); otherwise output goes to the log only.
pub fn supervise(node: &Node, c: &Container, attach: bool) -> Result<i32> {
    let pid_file: PathBuf = c.dir.join("init.pid");
    let _ = std::fs::remove_file(&pid_file);
    let log = LogWriter::open(&c.log_path())?;
    let cmd = runtime_command(node, c, &pid_file)?;
    let me = std::process::id() as i32;
    let tty = c.record.options.tty;
    let io = Stdio3 {
        stdin: attach && c.record.interactive,
        echo: attach,
        tty,
        log: Some(log),
    };
    let mut state = c.state()?;
    let started = |runtime_pid: u32| -> Result<()> {
        // The container's pid is known once the runtime wrote it; until then the runtime's
        // own pid stands in (signals sent to it are forwarded).
        // A short, flat poll: a container starts in tens of milliseconds, and every sleep
        // here is added to `run`'s latency. Bounded at a minute for a runtime that hangs.
        let mut pid = None;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if let Some(p) = read_pid(&pid_file) {
                pid = Some(p);
                break;
            }
            if !super::alive(runtime_pid as i32) || is_zombie(runtime_pid) {
                break;
            }
            std::thread::sleep(Duration::from_micros(250));
        }
        c.set_state(&State {
            status: Status::Running,
            pid: Some(pid.unwrap_or(runtime_pid as i32)),
            supervisor: Some(me),
            exit_code: None,
            error: None,
            started: Some(now()),
            finished: None,
        })
    };
    let result = run_attached(cmd, io, started);
    let code = match &result {
        Ok(code) => *code,
        Err(_) => 125,
    };
    if c.record.runtime.is_none() {
        reap_cgroup(&c.record.id);
    }
    state.status = Status::Exited;
    state.pid = None;
    state.supervisor = None;
    state.exit_code = Some(code);
    state.finished = Some(now());
    if let Err(e) = &result {
        state.error = Some(e.to_string());
    }
    if c.record.auto_remove {
        super::remove(node, c)?;
    } else {
        let _ = super::unmount_rootfs(c);
        c.set_state(&state)?;
    }
    result
}

/// Kills and removes what is left of the container's cgroup. The embedded runtime does this
/// itself; only a runtime that was killed (SIGKILL, OOM of the runner) leaves one behind.
fn reap_cgroup(id: &str) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let path = format!("/berth/{id}");
    let Ok(m) = crate::cgroup::manager_for(&path, Path::new("/sys/fs/cgroup"), &mountinfo) else {
        return;
    };
    if m.pids().is_ok_and(|p| !p.is_empty()) {
        let _ = m.kill_all(Signal::SIGKILL);
    }
    if m.pids().is_ok() {
        let _ = m.remove();
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(true)
}

/// Runs `process` inside running container `c`, attached to our stdio; returns its status.
pub fn exec(node: &Node, c: &Container, process: &crate::spec::Process, interactive: bool) -> Result<i32> {
    let s = c.state()?;
    let pid = match (s.status, s.pid) {
        (Status::Running, Some(p)) => p,
        _ => return Err(Error::Usage(format!("container {} is not running", c.record.name))),
    };
    let file = c.dir.join(format!("exec-{:08x}.json", rand::random::<u32>()));
    let bytes = serde_json::to_vec(process).map_err(|e| Error::Runtime(e.to_string()))?;
    std::fs::write(&file, bytes).map_err(Error::io(&file))?;
    let cmd = match &c.record.runtime {
        None => {
            let mut cmd = self_command();
            cmd.arg("--root")
                .arg(&node.root)
                .arg("__exec")
                .arg("--target")
                .arg(pid.to_string());
            cmd.arg("--cgroups-path").arg(format!("/berth/{}", c.record.id));
            cmd.arg("--process").arg(&file);
            cmd.arg("--seccomp-from").arg(&c.dir);
            cmd
        }
        Some(rt) => {
            let mut cmd = Command::new(rt);
            cmd.arg("--root")
                .arg(node.root.join("runc"))
                .arg("exec")
                .arg("--process")
                .arg(&file);
            cmd.arg(&c.record.id);
            cmd
        }
    };
    let io = Stdio3 {
        stdin: interactive,
        echo: true,
        tty: process.terminal,
        log: None,
    };
    let r = run_attached(cmd, io, |_| Ok(()));
    let _ = std::fs::remove_file(&file);
    r
}

/// Prints a container's log: the last `tail` lines (all when `None`), then, with
/// `follow`, new lines until the container exits.
pub fn logs(c: &Container, follow: bool, tail: Option<usize>, timestamps: bool) -> Result<()> {
    let path = c.log_path();
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(&path)(e)),
    };
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(Error::io(&path))?;
    let mut pending = String::new();
    let print_lines = |chunk: &str, skip: usize| {
        let mut out = std::io::stdout().lock();
        let mut err = std::io::stderr().lock();
        for line in chunk.lines().skip(skip) {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let log = v["log"].as_str().unwrap_or("");
            let prefix = if timestamps {
                format!("{} ", v["time"].as_str().unwrap_or(""))
            } else {
                String::new()
            };
            let w: &mut dyn Write = if v["stream"] == "stderr" { &mut err } else { &mut out };
            let _ = write!(w, "{prefix}{log}");
        }
        let _ = out.flush();
    };
    let complete = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let (done, rest) = text.split_at(complete);
    let count = done.lines().count();
    let skip = tail.map(|t| count.saturating_sub(t)).unwrap_or(0);
    print_lines(done, skip);
    pending.push_str(rest);
    if !follow {
        return Ok(());
    }
    loop {
        let mut more = String::new();
        file.read_to_string(&mut more).map_err(Error::io(&path))?;
        if !more.is_empty() {
            pending.push_str(&more);
            if let Some(i) = pending.rfind('\n') {
                let rest = pending.split_off(i + 1);
                print_lines(&pending, 0);
                pending = rest;
            }
            continue;
        }
        let running = c.state().map(|s| s.status != Status::Exited).unwrap_or(false);
        if !running {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = std::time::UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.000000005Z");
        assert_eq!(rfc3339(std::time::UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
    }

    #[test]
    fn log_lines_are_docker_json() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("l.log");
        let w = LogWriter::open(&p).unwrap();
        w.write("stdout", b"one\ntwo\npart");
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["log"], "one\n");
        assert_eq!(lines[2]["log"], "part");
        assert_eq!(lines[1]["stream"], "stdout");
    }
}
