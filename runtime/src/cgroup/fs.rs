//! File operations shared by both versions: every error names the file.

use super::{Error, Result};
use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn io_err(op: &'static str, path: PathBuf) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io { op, path, source }
}

/// Writes `value` to `dir/file` in one `write(2)` (cgroup files act on each write). The file
/// is created if missing, which only ever happens on the test doubles: cgroupfs refuses.
pub(super) fn write(dir: &Path, file: &str, value: &str) -> Result<()> {
    let p = dir.join(file);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .map_err(io_err("open", p.clone()))?;
    f.write_all(value.as_bytes()).map_err(io_err("write", p))
}

/// Reads `dir/file`; `None` if it does not exist.
pub(super) fn read_opt(dir: &Path, file: &str) -> Result<Option<String>> {
    let p = dir.join(file);
    match fs::read_to_string(&p) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", p)(e)),
    }
}

/// The pids listed in `dir/cgroup.procs`; none if the cgroup does not exist.
pub(super) fn procs(dir: &Path) -> Result<Vec<i32>> {
    Ok(read_opt(dir, "cgroup.procs")?
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

/// The value of `key` in a flat-keyed file (`memory.events`, `memory.oom_control`).
pub(super) fn keyed(content: &str, key: &str) -> Option<u64> {
    content.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Signals each pid; one already gone is fine.
pub(super) fn signal_all(pids: &[i32], signal: Signal) {
    for p in pids {
        match nix::sys::signal::kill(Pid::from_raw(*p), signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => tracing::warn!(pid = p, %e, "cgroup: cannot signal"),
        }
    }
}

/// Waits until `procs()` is empty, up to `limit`.
pub(super) fn wait_empty(dir: &Path, limit: Duration) -> Result<bool> {
    let start = Instant::now();
    loop {
        if procs(dir)?.is_empty() {
            return Ok(true);
        }
        if start.elapsed() >= limit {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How long [`rmdir`] keeps retrying a busy cgroup.
pub(super) const REMOVE_PATIENCE: Duration = Duration::from_secs(3);

/// Removes a cgroup directory. A cgroup cannot be removed while it has tasks, and a task that
/// was just killed stays listed until its parent has reaped it and the kernel has torn it
/// down, so `EBUSY` is retried with a growing pause, for [`REMOVE_PATIENCE`] in all.
pub(super) fn rmdir(dir: &Path) -> Result<()> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                if start.elapsed() >= REMOVE_PATIENCE {
                    return Err(Error::Busy {
                        path: dir.to_path_buf(),
                        waited_ms: start.elapsed().as_millis() as u64,
                    });
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(e) => return Err(io_err("rmdir", dir.to_path_buf())(e)),
        }
    }
}

/// Creates `rel` and its missing parents below `mount`, calling `init(parent, dir)` on each
/// level top-down (existing ones too, so a level left half-prepared is finished) before the
/// next level is made inside it.
pub(super) fn create_below(mount: &Path, rel: &Path, mut init: impl FnMut(&Path, &Path) -> Result<()>) -> Result<()> {
    let mut cur = mount.to_path_buf();
    for c in rel.components() {
        let parent = cur.clone();
        cur.push(c);
        match fs::create_dir(&cur) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("mkdir", cur)(e)),
        }
        init(&parent, &cur)?;
    }
    Ok(())
}
