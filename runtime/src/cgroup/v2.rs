//! cgroup v2: one directory in the unified hierarchy.

use super::fs::{self, create_below};
use super::{CgroupDir, CgroupManager, Error, Result, Version};
use crate::spec::{Cpu, Memory, Resources};
use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A container's cgroup on a v2 host: `<root>/<cgroups_path>`.
#[derive(Debug, Clone)]
pub struct V2 {
    root: PathBuf,
    dir: PathBuf,
}

impl V2 {
    /// The cgroup `rel` below the unified hierarchy mounted at `root`.
    pub fn new(root: &Path, rel: &Path) -> V2 {
        V2 {
            root: root.to_path_buf(),
            dir: root.join(rel),
        }
    }

    fn has(&self, file: &str) -> bool {
        self.dir.join(file).exists()
    }
}

/// `cpu.weight` (1..=10000) from v1 `cpu.shares` (2..=262144), runc's linear mapping
/// `1 + (shares − 2) × 9999 / 262142`, so that a spec written for v1 means the same on v2.
/// `None` for 0 (unset).
pub fn cpu_weight(shares: u64) -> Option<u64> {
    if shares == 0 {
        return None;
    }
    let s = shares.clamp(2, 262_144);
    Some(1 + ((s - 2) * 9999) / 262_142)
}

/// `memory.swap.max` from the spec: the spec's `swap` is memory + swap (v1's memsw), v2's
/// file is swap alone, so it is `swap − limit`; `-1` is `max`. `None`: leave it alone.
pub fn swap_max(m: &Memory) -> Result<Option<String>> {
    match (m.swap, m.limit) {
        (None, _) | (Some(0), _) => Ok(None),
        (Some(-1), _) => Ok(Some("max".into())),
        (Some(s), Some(l)) if l > 0 => {
            if s < l {
                return Err(Error::InvalidLimit(format!(
                    "memory+swap {s} is below the memory limit {l}"
                )));
            }
            Ok(Some((s - l).to_string()))
        }
        (Some(s), _) => Err(Error::InvalidLimit(format!("memory+swap {s} without a memory limit"))),
    }
}

/// `cpu.max`: `"<quota|max> <period>"`, or `None` when the spec sets neither.
pub fn cpu_max(c: &Cpu) -> Option<String> {
    if c.quota.is_none() && c.period.is_none() {
        return None;
    }
    let quota = match c.quota {
        Some(q) if q > 0 => q.to_string(),
        _ => "max".to_string(),
    };
    Some(format!("{quota} {}", c.period.unwrap_or(100_000)))
}

impl CgroupManager for V2 {
    fn create(&self) -> Result<()> {
        let rel = self.dir.strip_prefix(&self.root).unwrap_or(&self.dir).to_path_buf();
        // Controllers reach a cgroup only when every ancestor lists them in
        // cgroup.subtree_control: enable what each level offers, on the way down, in each
        // parent before its child is used. The leaf itself enables none (it holds processes:
        // the "no internal processes" rule).
        create_below(&self.root, &rel, |parent, _| enable_controllers(parent))
    }

    fn add_task(&self, pid: i32) -> Result<()> {
        fs::write(&self.dir, "cgroup.procs", &pid.to_string())
    }

    fn apply(&self, r: &Resources) -> Result<()> {
        if let Some(m) = &r.memory {
            if let Some(l) = m.limit {
                let v = if l > 0 { l.to_string() } else { "max".into() };
                fs::write(&self.dir, "memory.max", &v)?;
            }
            if let Some(v) = swap_max(m)? {
                if self.has("memory.swap.max") {
                    fs::write(&self.dir, "memory.swap.max", &v)?;
                } else {
                    tracing::debug!("cgroup: no memory.swap.max (swap accounting off); swap limit not applied");
                }
            }
        }
        if let Some(c) = &r.cpu {
            if let Some(w) = c.shares.and_then(cpu_weight) {
                fs::write(&self.dir, "cpu.weight", &w.to_string())?;
            }
            if let Some(v) = cpu_max(c) {
                fs::write(&self.dir, "cpu.max", &v)?;
            }
        }
        if let Some(p) = &r.pids {
            let v = if p.limit > 0 { p.limit.to_string() } else { "max".into() };
            fs::write(&self.dir, "pids.max", &v)?;
        }
        if !r.devices.is_empty() {
            // v2 has no devices.allow: the rules become an eBPF program on the cgroup. Not
            // being able to attach it fails the start: running without would expose every
            // device node an image ships (the host's kernel log, its disks).
            super::devices::attach(&self.dir, &r.devices).map_err(|source| Error::Io {
                op: "enforce device rules on",
                path: self.dir.clone(),
                source,
            })?;
        }
        Ok(())
    }

    fn pids(&self) -> Result<Vec<i32>> {
        fs::procs(&self.dir)
    }

    fn oom_killed(&self) -> Result<bool> {
        Ok(fs::read_opt(&self.dir, "memory.events")?
            .and_then(|c| fs::keyed(&c, "oom_kill"))
            .is_some_and(|n| n > 0))
    }

    fn kill_all(&self, signal: Signal) -> Result<()> {
        if !self.dir.exists() {
            return Ok(());
        }
        // cgroup.kill (Linux 5.14) kills the whole subtree atomically, forks included.
        if signal == Signal::SIGKILL && self.has("cgroup.kill") && fs::write(&self.dir, "cgroup.kill", "1").is_ok() {
            fs::wait_empty(&self.dir, Duration::from_secs(2))?;
            return Ok(());
        }
        let freezable = self.has("cgroup.freeze");
        if freezable {
            if let Err(e) = freeze(&self.dir, true) {
                tracing::debug!(%e, "cgroup: freeze before kill failed");
            }
        }
        let pids = fs::procs(&self.dir);
        if let Ok(p) = &pids {
            fs::signal_all(p, signal);
        }
        if freezable {
            freeze(&self.dir, false)?;
        }
        pids?;
        if signal == Signal::SIGKILL {
            for _ in 0..20 {
                if fs::wait_empty(&self.dir, Duration::from_millis(100))? {
                    break;
                }
                fs::signal_all(&fs::procs(&self.dir)?, Signal::SIGKILL);
            }
        }
        Ok(())
    }

    fn remove(&self) -> Result<()> {
        fs::rmdir(&self.dir)
    }

    fn dirs(&self) -> Vec<CgroupDir> {
        vec![CgroupDir {
            name: String::new(),
            path: self.dir.clone(),
        }]
    }

    fn version(&self) -> Version {
        Version::V2
    }
}

/// Enables in `dir`'s `cgroup.subtree_control` every controller `dir` has, in one write
/// (the file takes `+a +b`); if that is refused, one at a time, keeping those that take.
fn enable_controllers(dir: &Path) -> Result<()> {
    let available = fs::read_opt(dir, "cgroup.controllers")?.unwrap_or_default();
    let wanted: Vec<String> = available.split_whitespace().map(|c| format!("+{c}")).collect();
    if wanted.is_empty() {
        return Ok(());
    }
    if fs::write(dir, "cgroup.subtree_control", &wanted.join(" ")).is_ok() {
        return Ok(());
    }
    for w in &wanted {
        if let Err(e) = fs::write(dir, "cgroup.subtree_control", w) {
            tracing::debug!(%e, controller = %w, "cgroup: cannot enable controller");
        }
    }
    Ok(())
}

/// Freezes (or thaws) through `cgroup.freeze`, waiting for `cgroup.events` to agree.
fn freeze(dir: &Path, on: bool) -> Result<bool> {
    fs::write(dir, "cgroup.freeze", if on { "1" } else { "0" })?;
    let want = if on { 1 } else { 0 };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        match fs::read_opt(dir, "cgroup.events")?.and_then(|c| fs::keyed(&c, "frozen")) {
            Some(f) if f == want => return Ok(true),
            None => return Ok(false),
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    Ok(false)
}
