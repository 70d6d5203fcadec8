//! Containers: creation from an image, persisted records and state, and the lifecycle verbs.
//!
//! # Lifecycle
//! `create` prepares a writable snapshot on the image's top chain ID, mounts it at
//! `<root>/containers/<id>/rootfs`, writes `/etc/hosts`, `hostname`, `resolv.conf` and the
//! runtime spec (`config.json`): the directory is an OCI bundle. A **supervisor** (the `run`
//! process itself in the foreground, or a detached `berth-node __supervise` for `run -d`)
//! starts the runtime on the bundle, records the container's pid, copies its output to the
//! json log, waits, records the exit status and unmounts the rootfs. The verbs (`stop`,
//! `kill`, `wait`, `rm`, `logs`, `exec`) work from the records alone, from any process.
//!
//! # Files in a container's directory
//! ```text
//! container.json      what was asked: image, options, name (written once)
//! state.json          what is: status, pid, exit code, times (written by the supervisor)
//! config.json         the runtime spec
//! rootfs/             the mounted snapshot while the container exists
//! <id>-json.log       docker's json-file log format: {"log","stream","time"} per line
//! ```

pub mod spec;
pub mod supervise;

use crate::error::{Error, Result};
use crate::image::{ImageConfig, ImageRecord};
use crate::node::{write_atomic, Node};
use serde::{Deserialize, Serialize};
use spec::RunOptions;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What was asked for a container (`container.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// 64 hex characters.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// The image as named by the user.
    pub image: String,
    /// The image ID (config digest).
    pub image_id: String,
    /// Seconds since the epoch.
    pub created: u64,
    /// The options of `run`.
    pub options: RunOptions,
    /// The argv the container runs.
    pub args: Vec<String>,
    /// Signal `stop` sends first.
    pub stop_signal: String,
    /// Remove the container when it exits.
    pub auto_remove: bool,
    /// The external OCI runtime, when not the embedded one.
    pub runtime: Option<String>,
    /// The snapshot key of the writable layer.
    pub snapshot: String,
    /// Stdin kept open.
    pub interactive: bool,
}

/// Status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Bundle ready, not started.
    Created,
    /// Its process runs.
    Running,
    /// It ended.
    Exited,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Exited => "exited",
        })
    }
}

/// What is (`state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// Status.
    pub status: Status,
    /// Host pid of the container's first process while it runs.
    pub pid: Option<i32>,
    /// Pid of the supervisor.
    pub supervisor: Option<i32>,
    /// Exit code once exited (128+n for signal n).
    pub exit_code: Option<i32>,
    /// Why it could not start, if so.
    pub error: Option<String>,
    /// Seconds since the epoch.
    pub started: Option<u64>,
    /// Seconds since the epoch.
    pub finished: Option<u64>,
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One container on disk.
#[derive(Debug, Clone)]
pub struct Container {
    /// Its record.
    pub record: Record,
    /// Its directory (the bundle).
    pub dir: PathBuf,
}

fn read_json<T: for<'de> Deserialize<'de>>(p: &Path) -> Result<T> {
    let bytes = std::fs::read(p).map_err(Error::io(p))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Runtime(format!("{}: {e}", p.display())))
}

impl Container {
    /// The current state.
    pub fn state(&self) -> Result<State> {
        let mut s: State = read_json(&self.dir.join("state.json"))?;
        // A supervisor that died (killed, node rebooted) leaves "running" behind: the
        // process it watched is gone too, or about to be.
        if s.status == Status::Running && !s.supervisor.is_some_and(alive) && !s.pid.is_some_and(alive) {
            s.status = Status::Exited;
            s.pid = None;
            s.error
                .get_or_insert_with(|| "the supervisor ended before the container".into());
        }
        Ok(s)
    }

    /// Records a new state.
    pub fn set_state(&self, s: &State) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(s).map_err(|e| Error::Runtime(e.to_string()))?;
        write_atomic(&self.dir.join("state.json"), &bytes)
    }

    /// The mounted root filesystem.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// The json log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}-json.log", self.record.id))
    }
}

/// Whether process `pid` exists.
pub fn alive(pid: i32) -> bool {
    pid > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Every container on the node.
pub fn list(node: &Node) -> Result<Vec<Container>> {
    let dir = node.root.join("containers");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).map_err(Error::io(&dir))?.flatten() {
        let p = e.path();
        let Ok(record) = read_json::<Record>(&p.join("container.json")) else {
            continue;
        };
        out.push(Container { record, dir: p });
    }
    out.sort_by(|a, b| {
        b.record
            .created
            .cmp(&a.record.created)
            .then(a.record.id.cmp(&b.record.id))
    });
    Ok(out)
}

/// Finds a container by name, full id, or unique id prefix.
pub fn find(node: &Node, what: &str) -> Result<Container> {
    let all = list(node)?;
    if let Some(c) = all.iter().find(|c| c.record.name == what || c.record.id == what) {
        return Ok(c.clone());
    }
    let matches: Vec<&Container> = all.iter().filter(|c| c.record.id.starts_with(what)).collect();
    match matches.as_slice() {
        [one] if !what.is_empty() => Ok((*one).clone()),
        [] | [_] => Err(Error::NotFound(format!("no such container: {what}"))),
        _ => Err(Error::Usage(format!(
            "{what:?} matches several containers: give more of the id"
        ))),
    }
}

fn random_name() -> String {
    const A: [&str; 8] = ["brave", "calm", "eager", "keen", "proud", "quiet", "swift", "vivid"];
    const B: [&str; 8] = ["anchor", "buoy", "harbor", "keel", "mast", "pier", "quay", "sail"];
    let r: u64 = rand::random();
    format!(
        "{}_{}_{}",
        A[(r % 8) as usize],
        B[((r >> 8) % 8) as usize],
        (r >> 16) % 10_000
    )
}

/// Validates a container name (docker's grammar).
fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// Creates a container from `image`: snapshot, mounted rootfs, spec. Returns it in state
/// `created`.
pub fn create(
    node: &Node,
    image: &ImageRecord,
    image_name: &str,
    name: Option<&str>,
    opts: RunOptions,
    auto_remove: bool,
    interactive: bool,
) -> Result<Container> {
    if let Some(n) = name {
        if !valid_name(n) {
            return Err(Error::Usage(format!(
                "invalid container name {n:?}: use letters, digits and _.- (starting with a letter or digit)"
            )));
        }
    }
    let config: ImageConfig = serde_json::from_slice(&node.content.read(&image.config)?)
        .map_err(|e| Error::Image(format!("image config {}: {e}", image.config)))?;
    let run_config = config.config.clone().unwrap_or_default();
    let id = hex::encode(rand::random::<[u8; 32]>());
    let dir = node.container_dir(&id);
    let c = {
        let _lock = node.lock()?;
        let existing = list(node)?;
        let name = match name {
            Some(n) => {
                if existing.iter().any(|c| c.record.name == n) {
                    return Err(Error::Usage(format!(
                        "the container name {n:?} is already in use: remove that container (berth-node rm {n}) or choose another name"
                    )));
                }
                n.to_owned()
            }
            None => loop {
                let n = random_name();
                if !existing.iter().any(|c| c.record.name == n) {
                    break n;
                }
            },
        };
        std::fs::create_dir_all(dir.join("rootfs")).map_err(Error::io(&dir))?;
        let record = Record {
            id: id.clone(),
            name,
            image: image_name.to_owned(),
            image_id: image.config.to_string(),
            created: now(),
            args: Vec::new(),
            stop_signal: run_config.stop_signal.clone().unwrap_or_else(|| "SIGTERM".into()),
            auto_remove,
            runtime: node.runtime.clone(),
            snapshot: format!("container-{id}"),
            interactive,
            options: opts.clone(),
        };
        let c = Container {
            record,
            dir: dir.clone(),
        };
        c.set_state(&State {
            status: Status::Created,
            pid: None,
            supervisor: None,
            exit_code: None,
            error: None,
            started: None,
            finished: None,
        })?;
        write_record(&c)?;
        c
    };
    match prepare_bundle(node, &c, image, &run_config, &opts) {
        Ok(args) => {
            let mut c = c;
            c.record.args = args;
            write_record(&c)?;
            Ok(c)
        }
        Err(e) => {
            let _ = remove(node, &c);
            Err(e)
        }
    }
}

fn write_record(c: &Container) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(&c.record).map_err(|e| Error::Runtime(e.to_string()))?;
    write_atomic(&c.dir.join("container.json"), &bytes)
}

fn prepare_bundle(
    node: &Node,
    c: &Container,
    image: &ImageRecord,
    run_config: &crate::image::RunConfig,
    opts: &RunOptions,
) -> Result<Vec<String>> {
    let parent = image.top().map(|d| d.to_string());
    let mut labels = BTreeMap::new();
    labels.insert("berth.container".to_owned(), c.record.id.clone());
    let mut mounts = node.snapshots.prepare(&c.record.snapshot, parent.as_deref(), labels)?;
    if c.record.auto_remove {
        // A container removed when it exits never needs its writable layer after a crash,
        // so overlay may skip syncing it: without `volatile`, unmounting the rootfs syncs
        // the whole upper filesystem, which costs `run --rm` tens of milliseconds on a
        // busy disk.
        for m in mounts.iter_mut().filter(|m| m.kind == "overlay") {
            m.options.push("volatile".into());
        }
    }
    let rootfs = c.rootfs();
    let mounted = crate::sys::mount_all(&crate::sys::Linux, &mounts, &rootfs);
    let mounted = match mounted {
        // Kernels before 5.10 do not know `volatile`: mount without it.
        Err(_) if c.record.auto_remove => {
            for m in mounts.iter_mut() {
                m.options.retain(|o| o != "volatile");
            }
            crate::sys::mount_all(&crate::sys::Linux, &mounts, &rootfs)
        }
        other => other,
    };
    mounted.map_err(|e| Error::Runtime(format!("mounting the root filesystem at {}: {e}", rootfs.display())))?;
    let hostname = opts
        .hostname
        .clone()
        .unwrap_or_else(|| c.record.id.chars().take(12).collect());
    spec::write_etc_files(&c.dir, &hostname, opts.network)?;
    let mut s = spec::build(
        &spec::Inputs {
            id: &c.record.id,
            bundle: &c.dir,
            rootfs: &rootfs,
            image: run_config,
        },
        opts,
    )?;
    if c.record.runtime.is_some() {
        // An external runtime wants a console socket for a terminal; berth hands it the
        // terminal's slave side as plain stdio instead.
        s.process.terminal = false;
    }
    s.annotations.insert("berth.name".into(), c.record.name.clone());
    s.annotations.insert("berth.image".into(), c.record.image.clone());
    s.save(&c.dir).map_err(Error::io(c.dir.join("config.json")))?;
    Ok(s.process.args.clone())
}

/// Whether `path` is a mount point (listed in this process's mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| unescape_mountinfo(m) == want))
}

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Unmounts the rootfs if mounted.
pub fn unmount_rootfs(c: &Container) -> Result<()> {
    let r = c.rootfs();
    if is_mounted(&r) {
        crate::sys::unmount(&crate::sys::Linux, &r)
            .map_err(|e| Error::Runtime(format!("unmounting {}: {e}", r.display())))?;
    }
    Ok(())
}

/// Removes a container that is not running: its rootfs mount, snapshot, runtime state and
/// directory.
pub fn remove(node: &Node, c: &Container) -> Result<()> {
    unmount_rootfs(c)?;
    if let Some(rt) = &c.record.runtime {
        let _ = std::process::Command::new(rt)
            .arg("--root")
            .arg(node.root.join("runc"))
            .args(["delete", "--force", &c.record.id])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    match node.snapshots.remove(&c.record.snapshot) {
        Ok(()) | Err(crate::snapshot::Error::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    std::fs::remove_dir_all(&c.dir).or_else(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Ok(())
        } else {
            Err(Error::io(&c.dir)(e))
        }
    })
}

/// Parses a signal name (`SIGTERM`, `TERM`, `15`).
pub fn parse_signal(s: &str) -> Result<nix::sys::signal::Signal> {
    use std::str::FromStr as _;
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n).map_err(|_| Error::Usage(format!("unknown signal {s:?}")));
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") { up } else { format!("SIG{up}") };
    nix::sys::signal::Signal::from_str(&name).map_err(|_| Error::Usage(format!("unknown signal {s:?}")))
}

/// Sends `sig` to the container's first process.
pub fn kill(c: &Container, sig: nix::sys::signal::Signal) -> Result<()> {
    let s = c.state()?;
    match (s.status, s.pid) {
        (Status::Running, Some(pid)) => nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
            .map_err(|e| Error::Runtime(format!("signalling container {}: {e}", c.record.name))),
        _ => Err(Error::Usage(format!("container {} is not running", c.record.name))),
    }
}

/// Waits until the container has exited (or `timeout` passes) and returns its state.
pub fn wait(c: &Container, timeout: Option<Duration>) -> Result<State> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(2);
    loop {
        let s = match c.state() {
            Ok(s) => s,
            // Removed (`--rm`) while we waited: it exited.
            Err(_) if !c.dir.exists() => {
                return Ok(State {
                    status: Status::Exited,
                    pid: None,
                    supervisor: None,
                    exit_code: None,
                    error: Some("removed".into()),
                    started: None,
                    finished: None,
                })
            }
            Err(e) => return Err(e),
        };
        if s.status == Status::Exited || (s.status == Status::Created && s.supervisor.is_none() && s.error.is_some()) {
            return Ok(s);
        }
        if timeout.is_some_and(|t| start.elapsed() >= t) {
            return Ok(s);
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

/// Stops a running container: its stop signal, then SIGKILL after `timeout`.
pub fn stop(c: &Container, timeout: Duration) -> Result<State> {
    let s = c.state()?;
    if s.status != Status::Running {
        return Ok(s);
    }
    let sig = parse_signal(&c.record.stop_signal).unwrap_or(nix::sys::signal::Signal::SIGTERM);
    let _ = kill(c, sig);
    let s = wait(c, Some(timeout))?;
    if s.status == Status::Exited {
        return Ok(s);
    }
    let _ = kill(c, nix::sys::signal::Signal::SIGKILL);
    wait(c, Some(Duration::from_secs(30)))
}

/// Whether a snapshot key belongs to a container (so prune keeps it and its parents).
pub fn snapshot_in_use(node: &Node) -> Result<Vec<String>> {
    Ok(list(node)?.into_iter().map(|c| c.record.snapshot).collect())
}
