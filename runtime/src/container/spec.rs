//! Image config + `run` flags → OCI runtime spec, with docker's defaults: what a user of
//! `docker run` expects to find inside the container.

use crate::error::{Error, Result};
use crate::image::RunConfig;
use crate::spec::{
    Capabilities, Cpu, Device, DeviceRule, Linux, Memory, Mount, Namespace, Pids, Process, Resources, Rlimit, Root,
    Spec, User, OCI_VERSION,
};
use crate::sys::{read_in_root, secure_join};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The most of an image's `/etc/passwd` or `/etc/group` read (glibc's own files are a few
/// KiB; a larger one is an attack on the node's memory, not a user database).
const ETC_FILE_LIMIT: u64 = 4 << 20;

/// `PATH` when the image sets none (docker's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default capabilities (the 14 of moby's `oci/caps/defaults.go`).
pub const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// /proc and /sys paths hidden from unprivileged containers (docker's list).
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// /proc paths made read-only for unprivileged containers (docker's list).
pub const READONLY_PATHS: [&str; 5] = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// Network mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Network {
    /// A network namespace with only loopback.
    #[default]
    None,
    /// The host's network.
    Host,
}

/// A `-v host:container[:ro]` volume.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Volume {
    /// Host path (absolute).
    pub host: PathBuf,
    /// Path inside the container (absolute).
    pub container: String,
    /// Read-only.
    pub readonly: bool,
}

impl std::str::FromStr for Volume {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Volume, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let (host, ctr, mode) = match parts.as_slice() {
            [h, c] => (*h, *c, ""),
            [h, c, m] => (*h, *c, *m),
            _ => return Err(format!("{s:?}: a volume is HOST-PATH:CONTAINER-PATH[:ro|rw]")),
        };
        if !host.starts_with('/') {
            return Err(format!(
                "{s:?}: the host path must be absolute (named volumes are not supported)"
            ));
        }
        if !ctr.starts_with('/') {
            return Err(format!("{s:?}: the container path must be absolute"));
        }
        let readonly = match mode {
            "" | "rw" => false,
            "ro" => true,
            m => return Err(format!("{s:?}: unknown volume mode {m:?} (ro or rw)")),
        };
        Ok(Volume {
            host: PathBuf::from(host),
            container: ctr.to_owned(),
            readonly,
        })
    }
}

/// Everything `run` can say about a container, besides the image.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RunOptions {
    /// Replaces the image's Cmd.
    pub cmd: Vec<String>,
    /// Replaces the image's Entrypoint (and clears its Cmd, as docker does).
    pub entrypoint: Option<String>,
    /// `KEY=value` (or `KEY` to take the caller's value) in order; later wins.
    pub env: Vec<String>,
    /// Working directory.
    pub workdir: Option<String>,
    /// `user[:group]`, by name or number.
    pub user: Option<String>,
    /// Hostname (default: the first 12 characters of the id).
    pub hostname: Option<String>,
    /// Bind volumes.
    pub volumes: Vec<Volume>,
    /// `PATH[:options]` tmpfs mounts.
    pub tmpfs: Vec<String>,
    /// Read-only root filesystem.
    pub read_only: bool,
    /// Memory limit in bytes.
    pub memory: Option<i64>,
    /// Memory + swap limit in bytes (-1 unlimited).
    pub memory_swap: Option<i64>,
    /// CPUs (fractional).
    pub cpus: Option<f64>,
    /// Relative CPU weight.
    pub cpu_shares: Option<u64>,
    /// Process limit.
    pub pids_limit: Option<i64>,
    /// Network mode.
    pub network: Network,
    /// Capabilities to add (`NET_ADMIN` or `CAP_NET_ADMIN`, or `ALL`).
    pub cap_add: Vec<String>,
    /// Capabilities to drop (or `ALL`).
    pub cap_drop: Vec<String>,
    /// All capabilities, no masked paths, writable /sys.
    pub privileged: bool,
    /// A tiny init reaps zombies and forwards signals.
    pub init: bool,
    /// Allocate a terminal.
    pub tty: bool,
    /// The seccomp profile (`--security-opt seccomp=…`).
    #[serde(default)]
    pub seccomp: SeccompChoice,
    /// `--security-opt no-new-privileges`: also for `--privileged` (on by default otherwise).
    #[serde(default)]
    pub no_new_privileges: bool,
}

/// Which seccomp profile a container runs under.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum SeccompChoice {
    /// docker's default profile (none with `--privileged`, as in docker).
    #[default]
    Default,
    /// `seccomp=unconfined`: no filter.
    Unconfined,
    /// `seccomp=FILE`: the file's JSON (docker's format), kept in the record so that a
    /// restart does not depend on the file still being there.
    Profile(String),
}

/// Applies docker's `--security-opt` values to `o`: `seccomp=unconfined|FILE` and
/// `no-new-privileges[=true|false]` (`:` works as the separator too, docker's old spelling).
pub fn security_opts(opts: &[String], o: &mut RunOptions) -> Result<()> {
    for opt in opts {
        let (key, value) = match opt.split_once(['=', ':']) {
            Some((k, v)) => (k, Some(v)),
            None => (opt.as_str(), None),
        };
        match (key, value) {
            ("seccomp", Some("unconfined")) => o.seccomp = SeccompChoice::Unconfined,
            ("seccomp", Some(path)) if !path.is_empty() => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::Usage(format!("--security-opt seccomp={path}: {e}")))?;
                crate::seccomp::Profile::parse(&text)
                    .map_err(|e| Error::Usage(format!("--security-opt seccomp={path}: {e}")))?;
                o.seccomp = SeccompChoice::Profile(text);
            }
            ("no-new-privileges", None | Some("true")) => o.no_new_privileges = true,
            ("no-new-privileges", Some("false")) => o.no_new_privileges = false,
            _ => {
                return Err(Error::Usage(format!(
                "--security-opt {opt:?}: supported are seccomp=unconfined, seccomp=PROFILE.json and no-new-privileges"
            )))
            }
        }
    }
    Ok(())
}

/// `linux.seccomp` for a container with capabilities `caps`.
fn seccomp(o: &RunOptions, caps: &[String]) -> Result<Option<crate::spec::Seccomp>> {
    use crate::seccomp::{kernel_version, native_arch, Profile};
    let profile = match &o.seccomp {
        _ if o.privileged => return Ok(None),
        SeccompChoice::Unconfined => return Ok(None),
        SeccompChoice::Default => Profile::docker_default(),
        SeccompChoice::Profile(text) => Profile::parse(text).map_err(|e| Error::Usage(e.to_string()))?,
    };
    let s = profile.resolve(native_arch().0, caps, kernel_version());
    // Refuse now what the embedded runtime could not compile later (an unknown action).
    crate::seccomp::compile(&s).map_err(|e| Error::Usage(e.to_string()))?;
    Ok(Some(s))
}

/// Normalizes a capability name to `CAP_X`.
fn cap_name(c: &str) -> String {
    let up = c.to_ascii_uppercase();
    if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    }
}

/// Every capability the running kernel knows, by name (to validate names).
fn known_caps() -> Vec<String> {
    caps::runtime::thread_all_supported()
        .into_iter()
        .map(|c| c.to_string())
        .collect()
}

/// "All" capabilities for `--privileged` and `--cap-add ALL`: those the node itself may
/// pass on (its bounding set). Asking for more fails at capset; a node inside a container
/// often lacks some (CAP_SYS_RESOURCE, …).
fn all_caps() -> Vec<String> {
    match caps::read(None, caps::CapSet::Bounding) {
        Ok(set) => {
            let mut v: Vec<String> = set.into_iter().map(|c| c.to_string()).collect();
            v.sort();
            v
        }
        Err(_) => known_caps(),
    }
}

/// The capability set after `--privileged`, `--cap-add` and `--cap-drop`.
pub fn capabilities(o: &RunOptions) -> Result<Vec<String>> {
    if o.privileged {
        return Ok(all_caps());
    }
    let known = known_caps();
    let check = |c: &str| -> Result<String> {
        let n = cap_name(c);
        if n == "CAP_ALL" || known.contains(&n) || DEFAULT_CAPS.contains(&n.as_str()) {
            Ok(n)
        } else {
            Err(Error::Usage(format!("unknown capability {c:?}")))
        }
    };
    let adds = o.cap_add.iter().map(|c| check(c)).collect::<Result<Vec<_>>>()?;
    let drops = o.cap_drop.iter().map(|c| check(c)).collect::<Result<Vec<_>>>()?;
    let mut set: Vec<String> = if adds.iter().any(|c| c == "CAP_ALL") {
        all_caps()
    } else {
        DEFAULT_CAPS.iter().map(|s| (*s).to_owned()).collect()
    };
    if drops.iter().any(|c| c == "CAP_ALL") {
        set.clear();
    }
    for a in adds.into_iter().filter(|a| a != "CAP_ALL") {
        if !set.contains(&a) {
            set.push(a);
        }
    }
    set.retain(|c| !drops.contains(c));
    Ok(set)
}

/// Parses a size like `64m`, `1g`, `512k`, `1048576` (docker's units: binary multiples).
pub fn parse_size(s: &str) -> std::result::Result<i64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    if s.trim() == "-1" {
        return Ok(-1);
    }
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (like 64m, 1g or a number of bytes)"))?;
    if n.is_nan() || n < 0.0 {
        return Err(format!("{s:?}: a size cannot be negative"));
    }
    Ok((n * mult as f64) as i64)
}

/// Reads `/etc/<file>` of the rootfs as `name:x:id:...` lines (none when the file is
/// missing; an error when its path cannot be resolved inside the rootfs).
fn etc_entries(rootfs: &Path, file: &str) -> Result<Vec<Vec<String>>> {
    let inside = Path::new("/etc").join(file);
    let Some(bytes) = read_in_root(rootfs, &inside, ETC_FILE_LIMIT).map_err(Error::io(&inside))? else {
        return Ok(Vec::new());
    };
    Ok(String::from_utf8_lossy(&bytes)
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| l.split(':').map(str::to_owned).collect::<Vec<_>>())
        .filter(|f| f.len() >= 3)
        .collect())
}

/// Resolves `user[:group]` (names from the image's /etc/passwd and /etc/group, numbers as
/// they are) to ids and supplementary groups, as docker does.
pub fn resolve_user(rootfs: &Path, spec: &str) -> Result<User> {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = etc_entries(rootfs, "passwd")?;
    let groups = etc_entries(rootfs, "group")?;
    let (uid, name, mut gid) = if u.is_empty() {
        (0, Some("root".to_owned()), 0)
    } else if let Ok(n) = u.parse::<u32>() {
        let entry = passwd.iter().find(|e| e[2] == u);
        let gid = entry.and_then(|e| e.get(3)).and_then(|g| g.parse().ok()).unwrap_or(0);
        (n, entry.map(|e| e[0].clone()), gid)
    } else {
        let entry = passwd
            .iter()
            .find(|e| e[0] == u)
            .ok_or_else(|| Error::Usage(format!("unable to find user {u}: no matching entries in passwd file")))?;
        let uid = entry[2]
            .parse()
            .map_err(|_| Error::Usage(format!("user {u} has an invalid uid {:?} in /etc/passwd", entry[2])))?;
        let gid = entry.get(3).and_then(|g| g.parse().ok()).unwrap_or(0);
        (uid, Some(u.to_owned()), gid)
    };
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups
                .iter()
                .find(|e| e[0] == g)
                .and_then(|e| e[2].parse().ok())
                .ok_or_else(|| Error::Usage(format!("unable to find group {g}: no matching entries in group file")))?,
        };
    }
    let mut additional_gids: Vec<u32> = match &name {
        Some(n) => groups
            .iter()
            .filter(|e| e.get(3).is_some_and(|m| m.split(',').any(|x| x == n)))
            .filter_map(|e| e[2].parse().ok())
            .filter(|&x| x != gid)
            .collect(),
        None => Vec::new(),
    };
    additional_gids.sort_unstable();
    additional_gids.dedup();
    Ok(User {
        uid,
        gid,
        additional_gids,
    })
}

/// The container's environment: image Env, then `-e` (later wins), then PATH and HOSTNAME
/// defaults where unset.
pub fn environment(image: &[String], flags: &[String], hostname: &str, tty: bool) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: String, v: String| match env.iter_mut().find(|(x, _)| *x == k) {
        Some(slot) => slot.1 = v,
        None => env.push((k, v)),
    };
    for e in image {
        if let Some((k, v)) = e.split_once('=') {
            set(k.to_owned(), v.to_owned());
        }
    }
    for e in flags {
        match e.split_once('=') {
            Some((k, v)) => set(k.to_owned(), v.to_owned()),
            // `-e NAME` passes the caller's value through, and nothing when it has none.
            None => {
                if let Ok(v) = std::env::var(e) {
                    set(e.clone(), v);
                }
            }
        }
    }
    let mut out: Vec<String> = Vec::new();
    if !env.iter().any(|(k, _)| k == "PATH") {
        out.push(format!("PATH={DEFAULT_PATH}"));
    }
    out.push(format!("HOSTNAME={hostname}"));
    if tty && !env.iter().any(|(k, _)| k == "TERM") {
        out.push("TERM=xterm".into());
    }
    out.extend(
        env.into_iter()
            .filter(|(k, _)| k != "HOSTNAME")
            .map(|(k, v)| format!("{k}={v}")),
    );
    out
}

/// The argv: Entrypoint + Cmd, where `run` arguments replace Cmd and `--entrypoint`
/// replaces Entrypoint and clears the image's Cmd (docker's rules).
pub fn argv(image: &RunConfig, o: &RunOptions) -> Result<Vec<String>> {
    let entry: Vec<String> = match &o.entrypoint {
        Some(e) if e.is_empty() => Vec::new(),
        Some(e) => vec![e.clone()],
        None => image.entrypoint.clone().unwrap_or_default(),
    };
    let cmd: Vec<String> = if !o.cmd.is_empty() {
        o.cmd.clone()
    } else if o.entrypoint.is_some() {
        Vec::new()
    } else {
        image.cmd.clone().unwrap_or_default()
    };
    let args: Vec<String> = entry.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(Error::Usage(
            "no command specified: the image has no Entrypoint or Cmd; give one after the image".into(),
        ));
    }
    Ok(args)
}

fn mount(dest: &str, kind: &str, source: &str, options: &[&str]) -> Mount {
    Mount {
        destination: dest.into(),
        kind: Some(kind.into()),
        source: Some(source.into()),
        options: options.iter().map(|s| (*s).to_owned()).collect(),
    }
}

fn dev(path: &str, major: i64, minor: i64) -> Device {
    Device {
        path: path.into(),
        kind: "c".into(),
        major,
        minor,
        file_mode: Some(0o666),
        uid: Some(0),
        gid: Some(0),
    }
}

fn rule(kind: &str, major: Option<i64>, minor: Option<i64>, access: &str) -> DeviceRule {
    DeviceRule {
        allow: true,
        kind: Some(kind.into()),
        major,
        minor,
        access: Some(access.into()),
    }
}

/// Open files: docker's 1024 soft / 524288 hard, but never above the hard limit the node
/// itself has (raising it needs CAP_SYS_RESOURCE, which a node in a container may lack).
fn nofile() -> Rlimit {
    let hard_now = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, h)| h)
        .unwrap_or(524_288);
    let hard = hard_now.min(524_288);
    Rlimit {
        kind: "RLIMIT_NOFILE".into(),
        hard,
        soft: hard.min(1024),
    }
}

/// Everything [`build`] needs besides the options.
pub struct Inputs<'a> {
    /// Container id.
    pub id: &'a str,
    /// The bundle directory (holds `config.json`, `rootfs/`, `hosts`, …).
    pub bundle: &'a Path,
    /// The mounted root filesystem (to resolve users and create the working directory).
    pub rootfs: &'a Path,
    /// The image's run config.
    pub image: &'a RunConfig,
}

/// Builds the runtime spec for a container.
pub fn build(i: &Inputs, o: &RunOptions) -> Result<Spec> {
    let hostname = o.hostname.clone().unwrap_or_else(|| i.id.chars().take(12).collect());
    let args = argv(i.image, o)?;
    let env = environment(i.image.env.as_deref().unwrap_or(&[]), &o.env, &hostname, o.tty);
    let user_spec = o.user.clone().or_else(|| i.image.user.clone()).unwrap_or_default();
    let user = resolve_user(i.rootfs, &user_spec)?;
    let cwd = o
        .workdir
        .clone()
        .or_else(|| i.image.working_dir.clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(Error::Usage(format!(
            "the working directory {cwd:?} must be an absolute path"
        )));
    }
    // docker creates a missing working directory (owned by the user, as docker does), and
    // only inside the rootfs: resolved by the one resolver, created without following links.
    let host_cwd = secure_join(i.rootfs, Path::new(&cwd)).map_err(Error::io(&cwd))?;
    if std::fs::symlink_metadata(&host_cwd).is_err() && !o.read_only {
        crate::sys::create_dir_all(&host_cwd, 0o755).map_err(Error::io(&cwd))?;
        let _ = std::os::unix::fs::lchown(&host_cwd, Some(user.uid), Some(user.gid));
    }

    let caps = capabilities(o)?;
    let seccomp = seccomp(o, &caps)?;
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            if o.privileged {
                &["nosuid", "noexec", "nodev"]
            } else {
                &["nosuid", "noexec", "nodev", "ro"]
            },
        ),
    ];
    for (f, dest) in [
        ("hosts", "/etc/hosts"),
        ("hostname", "/etc/hostname"),
        ("resolv.conf", "/etc/resolv.conf"),
    ] {
        let src = i.bundle.join(f);
        let mut opts = vec!["rbind", "rprivate"];
        if o.read_only {
            opts.push("ro");
        }
        mounts.push(mount(dest, "bind", &src.to_string_lossy(), &opts));
    }
    for t in &o.tmpfs {
        let (path, opts) = t.split_once(':').unwrap_or((t, ""));
        if !path.starts_with('/') {
            return Err(Error::Usage(format!("--tmpfs {t:?}: the path must be absolute")));
        }
        let mut options: Vec<&str> = vec!["noexec", "nosuid", "nodev"];
        if !opts.contains("size=") {
            options.push("size=65536k");
        }
        options.extend(opts.split(',').filter(|s| !s.is_empty()));
        mounts.push(mount(path, "tmpfs", "tmpfs", &options));
    }
    for v in &o.volumes {
        if !v.host.exists() {
            // docker creates a missing host directory for a bind volume.
            std::fs::create_dir_all(&v.host).map_err(Error::io(&v.host))?;
        }
        let mut opts = vec!["rbind", "rprivate"];
        if v.readonly {
            opts.push("ro");
        }
        mounts.push(mount(&v.container, "bind", &v.host.to_string_lossy(), &opts));
    }

    let mut namespaces: Vec<Namespace> = ["pid", "ipc", "uts", "mount"]
        .into_iter()
        .map(|k| Namespace {
            kind: k.into(),
            path: None,
        })
        .collect();
    if o.network == Network::None {
        namespaces.push(Namespace {
            kind: "network".into(),
            path: None,
        });
    }

    let memory = o.memory.map(|limit| Memory {
        limit: Some(limit),
        // docker: swap defaults to as much again as memory.
        swap: Some(o.memory_swap.unwrap_or(limit.saturating_mul(2))),
    });
    let cpu = if o.cpus.is_some() || o.cpu_shares.is_some() {
        Some(Cpu {
            shares: o.cpu_shares,
            quota: o.cpus.map(|c| (c * 100_000.0) as i64),
            period: o.cpus.map(|_| 100_000),
        })
    } else {
        None
    };
    let mut devices_rules = vec![DeviceRule {
        allow: false,
        kind: Some("a".into()),
        major: None,
        minor: None,
        access: Some("rwm".into()),
    }];
    if o.privileged {
        devices_rules = vec![rule("a", None, None, "rwm")];
    } else {
        devices_rules.extend([
            rule("c", None, None, "m"),
            rule("b", None, None, "m"),
            rule("c", Some(1), Some(3), "rwm"),
            rule("c", Some(1), Some(5), "rwm"),
            rule("c", Some(1), Some(7), "rwm"),
            rule("c", Some(1), Some(8), "rwm"),
            rule("c", Some(1), Some(9), "rwm"),
            rule("c", Some(5), Some(0), "rwm"),
            rule("c", Some(5), Some(1), "rwm"),
            rule("c", Some(5), Some(2), "rwm"),
            rule("c", Some(136), None, "rwm"),
            rule("c", Some(10), Some(200), "rwm"),
        ]);
    }
    let resources = Resources {
        memory,
        cpu,
        pids: o.pids_limit.map(|limit| Pids { limit }),
        devices: devices_rules,
    };

    let mut annotations = BTreeMap::new();
    if o.init {
        annotations.insert("berth.init".to_owned(), "true".to_owned());
    }
    Ok(Spec {
        oci_version: OCI_VERSION.into(),
        process: Process {
            terminal: o.tty,
            user,
            args,
            env,
            cwd,
            capabilities: Some(Capabilities {
                bounding: caps.clone(),
                effective: caps.clone(),
                inheritable: Vec::new(),
                permitted: caps,
                ambient: Vec::new(),
            }),
            rlimits: vec![nofile()],
            no_new_privileges: !o.privileged || o.no_new_privileges,
        },
        root: Root {
            path: "rootfs".into(),
            readonly: o.read_only,
        },
        hostname: Some(hostname),
        mounts,
        linux: Linux {
            namespaces,
            resources: Some(resources),
            cgroups_path: Some(format!("/berth/{}", i.id)),
            masked_paths: if o.privileged {
                Vec::new()
            } else {
                MASKED_PATHS.iter().map(|s| (*s).to_owned()).collect()
            },
            readonly_paths: if o.privileged {
                Vec::new()
            } else {
                READONLY_PATHS.iter().map(|s| (*s).to_owned()).collect()
            },
            devices: vec![
                dev("/dev/null", 1, 3),
                dev("/dev/zero", 1, 5),
                dev("/dev/full", 1, 7),
                dev("/dev/random", 1, 8),
                dev("/dev/urandom", 1, 9),
                dev("/dev/tty", 5, 0),
            ],
            rootfs_propagation: Some("rprivate".into()),
            seccomp,
        },
        annotations,
    })
}

/// The files bind-mounted over the image's /etc/hosts, /etc/hostname and /etc/resolv.conf.
pub fn write_etc_files(bundle: &Path, hostname: &str, network: Network) -> Result<()> {
    let hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n127.0.1.1\t{hostname}\n"
    );
    let resolv = match network {
        // The host's resolvers serve a container on the host's network; loopback-only
        // containers have nothing to resolve with, which an empty file says plainly.
        Network::Host => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        Network::None => String::new(),
    };
    for (name, text) in [
        ("hosts", hosts),
        ("hostname", format!("{hostname}\n")),
        ("resolv.conf", resolv),
    ] {
        let p = bundle.join(name);
        std::fs::write(&p, text).map_err(Error::io(&p))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\napp:x:1000:\nwheel:x:10:app,bob\n",
        )
        .unwrap();
        d
    }

    #[test]
    fn users_resolve_from_the_image() {
        let r = rootfs();
        assert_eq!(
            resolve_user(r.path(), "app").unwrap(),
            User {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![10]
            }
        );
        assert_eq!(resolve_user(r.path(), "1000:10").unwrap().gid, 10);
        assert_eq!(resolve_user(r.path(), "app:wheel").unwrap().gid, 10);
        assert_eq!(resolve_user(r.path(), "4242").unwrap().uid, 4242);
        assert_eq!(resolve_user(r.path(), "").unwrap().uid, 0);
        let e = resolve_user(r.path(), "nobody").unwrap_err().to_string();
        assert!(e.contains("unable to find user nobody"), "{e}");
    }

    #[test]
    fn lookups_stay_inside_the_root() {
        let r = rootfs();
        std::os::unix::fs::symlink("/etc", r.path().join("escape")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", r.path().join("up")).unwrap();
        assert_eq!(
            secure_join(r.path(), Path::new("/escape/passwd")).unwrap(),
            r.path().join("etc/passwd")
        );
        assert_eq!(
            secure_join(r.path(), Path::new("/up/passwd")).unwrap(),
            r.path().join("etc/passwd")
        );
        assert_eq!(
            secure_join(r.path(), Path::new("/../../x")).unwrap(),
            r.path().join("x")
        );
        // An /etc/passwd that is not a regular file (a device node, a FIFO) is never read.
        std::fs::remove_file(r.path().join("etc/passwd")).unwrap();
        nix::unistd::mkfifo(
            &r.path().join("etc/passwd"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        let e = resolve_user(r.path(), "app").unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn argv_follows_docker() {
        let img = RunConfig {
            entrypoint: Some(vec!["/entry".into()]),
            cmd: Some(vec!["default".into()]),
            ..Default::default()
        };
        let mut o = RunOptions::default();
        assert_eq!(argv(&img, &o).unwrap(), ["/entry", "default"]);
        o.cmd = vec!["x".into()];
        assert_eq!(argv(&img, &o).unwrap(), ["/entry", "x"]);
        o.cmd.clear();
        o.entrypoint = Some("/other".into());
        assert_eq!(argv(&img, &o).unwrap(), ["/other"]);
        o.entrypoint = Some(String::new());
        assert!(argv(&img, &o).is_err());
    }

    #[test]
    fn environment_layers_flags_over_image() {
        let env = environment(
            &["PATH=/img".into(), "A=1".into()],
            &["A=2".into(), "B=3".into()],
            "h",
            false,
        );
        assert_eq!(env, ["HOSTNAME=h", "PATH=/img", "A=2", "B=3"]);
        let env = environment(&[], &[], "h", true);
        assert_eq!(env[0], format!("PATH={DEFAULT_PATH}"));
        assert!(env.contains(&"TERM=xterm".to_owned()));
    }

    #[test]
    fn capabilities_add_and_drop() {
        let mut o = RunOptions::default();
        assert_eq!(capabilities(&o).unwrap().len(), 14);
        o.cap_drop = vec!["chown".into()];
        o.cap_add = vec!["NET_ADMIN".into()];
        let c = capabilities(&o).unwrap();
        assert!(!c.contains(&"CAP_CHOWN".to_owned()) && c.contains(&"CAP_NET_ADMIN".to_owned()));
        o.cap_drop = vec!["ALL".into()];
        o.cap_add = vec!["KILL".into()];
        assert_eq!(capabilities(&o).unwrap(), ["CAP_KILL"]);
        o.cap_add = vec!["BOGUS".into()];
        assert!(capabilities(&o).is_err());
    }

    #[test]
    fn sizes_and_volumes_parse() {
        assert_eq!(parse_size("64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("lots").is_err());
        let v: Volume = "/a:/b:ro".parse().unwrap();
        assert!(v.readonly && v.container == "/b");
        assert!("rel:/b".parse::<Volume>().is_err());
        assert!("/a:/b:xx".parse::<Volume>().is_err());
    }

    #[test]
    fn spec_has_docker_defaults() {
        let r = rootfs();
        let bundle = tempfile::tempdir().unwrap();
        let img = RunConfig {
            cmd: Some(vec!["sh".into()]),
            working_dir: Some("/work".into()),
            ..Default::default()
        };
        let o = RunOptions {
            memory: Some(32 << 20),
            pids_limit: Some(10),
            read_only: false,
            ..Default::default()
        };
        let s = build(
            &Inputs {
                id: "0123456789abcdef",
                bundle: bundle.path(),
                rootfs: r.path(),
                image: &img,
            },
            &o,
        )
        .unwrap();
        assert_eq!(s.hostname.as_deref(), Some("0123456789ab"));
        assert_eq!(s.process.cwd, "/work");
        assert!(r.path().join("work").is_dir(), "a missing working directory is created");
        assert!(s.namespace("network").is_some() && s.namespace("pid").is_some());
        let res = s.linux.resources.as_ref().unwrap();
        assert_eq!(res.memory.as_ref().unwrap().swap, Some(64 << 20));
        assert_eq!(res.pids.as_ref().unwrap().limit, 10);
        assert!(s.linux.masked_paths.contains(&"/proc/kcore".to_owned()));
        assert!(s.process.no_new_privileges);
        assert!(s.mounts.iter().any(|m| m.destination == "/etc/hosts"));
    }
}
