//! cgroup v1: one directory per hierarchy, `<mount>/<cgroups_path>`.

use super::fs::{self, create_below};
use super::{CgroupDir, CgroupManager, Error, Hierarchy, Result, Version};
use crate::spec::{DeviceRule, Resources};
use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A container's cgroup on a v1 (or hybrid) host: the same relative path in every mounted
/// hierarchy, so the container is accounted and limited by each controller, and listed by
/// the named ones (`name=systemd`) like any other service.
#[derive(Debug, Clone)]
pub struct V1 {
    /// `(hierarchy, this cgroup's directory in it)`.
    dirs: Vec<(Hierarchy, PathBuf)>,
}

impl V1 {
    /// The cgroup `rel` in each of `hierarchies`.
    pub fn new(hierarchies: &[Hierarchy], rel: &Path) -> V1 {
        V1 {
            dirs: hierarchies.iter().map(|h| (h.clone(), h.mount.join(rel))).collect(),
        }
    }

    /// The directory in the hierarchy holding `controller`.
    fn dir(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(h, _)| h.controllers.iter().any(|c| c == controller))
            .map(|(_, d)| d.as_path())
    }

    fn require(&self, controller: &'static str, what: &'static str) -> Result<&Path> {
        self.dir(controller)
            .ok_or(Error::MissingController { controller, what })
    }

    /// A directory to list processes from: `pids` or `freezer` when mounted (always joined),
    /// else the first.
    fn any_dir(&self) -> Option<&Path> {
        self.dir("pids")
            .or_else(|| self.dir("freezer"))
            .or_else(|| self.dirs.first().map(|(_, d)| d.as_path()))
    }

    fn apply_memory(&self, m: &crate::spec::Memory) -> Result<()> {
        if m.limit.is_none() && m.swap.is_none() {
            return Ok(());
        }
        let dir = self.require("memory", "a memory limit")?;
        let memsw = "memory.memsw.limit_in_bytes";
        // The kernel keeps limit ≤ memsw at every step, so when memsw grows (or becomes
        // unlimited) it is written first, and when it shrinks, last.
        let has_memsw = fs::read_opt(dir, memsw)?;
        let swap_first = match (m.swap, &has_memsw) {
            (Some(s), Some(cur)) => s == -1 || cur.trim().parse::<i64>().is_ok_and(|c| s > c),
            _ => false,
        };
        let write_swap = |dir: &Path| -> Result<()> {
            match (m.swap, has_memsw.is_some()) {
                (Some(s), true) => fs::write(dir, memsw, &s.to_string()),
                (Some(_), false) => {
                    tracing::debug!("cgroup: no swap accounting (memory.memsw.*); swap limit not applied");
                    Ok(())
                }
                (None, _) => Ok(()),
            }
        };
        if swap_first {
            write_swap(dir)?;
        }
        if let Some(l) = m.limit {
            fs::write(dir, "memory.limit_in_bytes", &l.to_string())?;
        }
        if !swap_first {
            write_swap(dir)?;
        }
        Ok(())
    }

    fn apply_cpu(&self, c: &crate::spec::Cpu) -> Result<()> {
        if c.shares.is_none() && c.quota.is_none() && c.period.is_none() {
            return Ok(());
        }
        let dir = self.require("cpu", "a cpu limit")?;
        if let Some(s) = c.shares {
            fs::write(dir, "cpu.shares", &s.to_string())?;
        }
        // Period first: the kernel checks quota against the period in place.
        if let Some(p) = c.period {
            fs::write(dir, "cpu.cfs_period_us", &p.to_string())?;
        }
        if let Some(q) = c.quota {
            fs::write(dir, "cpu.cfs_quota_us", &q.to_string())?;
        }
        Ok(())
    }

    fn apply_devices(&self, rules: &[DeviceRule]) -> Result<()> {
        if rules.is_empty() {
            return Ok(());
        }
        let dir = self.require("devices", "device rules")?;
        for r in rules {
            let file = if r.allow { "devices.allow" } else { "devices.deny" };
            fs::write(dir, file, &device_rule_line(r))?;
        }
        Ok(())
    }
}

/// `c 1:3 rwm`, with `*` for an absent number and `a`/`rwm` as the defaults.
pub(super) fn device_rule_line(r: &DeviceRule) -> String {
    let num = |n: Option<i64>| n.filter(|n| *n >= 0).map_or("*".to_string(), |n| n.to_string());
    format!(
        "{} {}:{} {}",
        r.kind.as_deref().unwrap_or("a"),
        num(r.major),
        num(r.minor),
        r.access.as_deref().unwrap_or("rwm")
    )
}

impl CgroupManager for V1 {
    fn create(&self) -> Result<()> {
        for (h, dir) in &self.dirs {
            let rel = dir.strip_prefix(&h.mount).unwrap_or(dir);
            let cpuset = h.controllers.iter().any(|c| c == "cpuset");
            create_below(&h.mount, rel, |parent, new| {
                // A new cpuset cgroup starts with no cpus and no memory nodes, and no task
                // can join it until both are set: inherit the parent's.
                if cpuset {
                    for f in ["cpuset.cpus", "cpuset.mems"] {
                        let mine = fs::read_opt(new, f)?;
                        if mine.as_deref().is_none_or(|v| v.trim().is_empty()) {
                            if let Some(v) = fs::read_opt(parent, f)? {
                                fs::write(new, f, v.trim())?;
                            }
                        }
                    }
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    fn add_task(&self, pid: i32) -> Result<()> {
        for (_, dir) in &self.dirs {
            fs::write(dir, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    fn apply(&self, r: &Resources) -> Result<()> {
        if let Some(m) = &r.memory {
            self.apply_memory(m)?;
        }
        if let Some(c) = &r.cpu {
            self.apply_cpu(c)?;
        }
        if let Some(p) = &r.pids {
            let dir = self.require("pids", "a pids limit")?;
            let v = if p.limit > 0 { p.limit.to_string() } else { "max".into() };
            fs::write(dir, "pids.max", &v)?;
        }
        self.apply_devices(&r.devices)
    }

    fn pids(&self) -> Result<Vec<i32>> {
        match self.any_dir() {
            Some(d) => fs::procs(d),
            None => Ok(Vec::new()),
        }
    }

    fn oom_killed(&self) -> Result<bool> {
        let Some(dir) = self.dir("memory") else {
            return Ok(false);
        };
        Ok(fs::read_opt(dir, "memory.oom_control")?
            .and_then(|c| fs::keyed(&c, "oom_kill"))
            .is_some_and(|n| n > 0))
    }

    fn kill_all(&self, signal: Signal) -> Result<()> {
        let Some(list) = self.any_dir() else { return Ok(()) };
        // Frozen, no task can fork between the listing and the signal. A freeze that does not
        // settle in time still gets its thaw, so nothing is left frozen.
        let freezer = self.dir("freezer").filter(|d| d.join("freezer.state").exists());
        if let Some(d) = freezer {
            if let Err(e) = freeze(d, true) {
                tracing::debug!(%e, "cgroup: freeze before kill failed");
            }
        }
        let pids = fs::procs(list);
        if let Ok(pids) = &pids {
            fs::signal_all(pids, signal);
        }
        if let Some(d) = freezer {
            freeze(d, false)?;
        }
        pids?;
        if signal == Signal::SIGKILL {
            // Without a freezer a process may have forked between listing and killing: repeat.
            for _ in 0..20 {
                if fs::wait_empty(list, Duration::from_millis(100))? {
                    break;
                }
                fs::signal_all(&fs::procs(list)?, Signal::SIGKILL);
            }
        }
        Ok(())
    }

    fn remove(&self) -> Result<()> {
        for (_, dir) in &self.dirs {
            fs::rmdir(dir)?;
        }
        Ok(())
    }

    fn dirs(&self) -> Vec<CgroupDir> {
        self.dirs
            .iter()
            .map(|(h, d)| CgroupDir {
                name: h
                    .mount
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                path: d.clone(),
            })
            .collect()
    }

    fn version(&self) -> Version {
        Version::V1
    }
}

/// Freezes (or thaws) through `freezer.state`; `Ok(false)` if it did not settle in time.
fn freeze(dir: &Path, on: bool) -> Result<bool> {
    let want = if on { "FROZEN" } else { "THAWED" };
    fs::write(dir, "freezer.state", want)?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        match fs::read_opt(dir, "freezer.state")? {
            Some(s) if s.trim() == want => return Ok(true),
            None => return Ok(false),
            _ => {
                // FREEZING: write again, as runc does, to nudge tasks that were forking.
                std::thread::sleep(Duration::from_millis(5));
                fs::write(dir, "freezer.state", want)?;
            }
        }
    }
    Ok(false)
}
