//! Two tiers: the plan (order and shape of the syscalls) against [`Recording`], without root;
//! and the real thing, as root, on a busybox rootfs.
//!
//! The real runs need a single-threaded process, which a test harness is not. So each real
//! test re-executes this test binary on itself (`--exact <its own name>`) with a request in
//! `BERTH_RUNTIME_PROBE`; in that process the test body's first call, [`serve_probe`], forks
//! (the child has only the forking thread: single-threaded), performs the request there
//! ([`run`] or [`exec`]) with stdout/stderr in files, and exits with its status.

use super::*;
use crate::spec::{self, Capabilities, Device, Linux as SpecLinux, Mount, Namespace, Resources, Rlimit, Root, User};
use crate::sys::{Call, Recording};
use nix::mount::MsFlags;
use nix::sys::stat::SFlag;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

// ----------------------------------------------------------------------------------------
// A docker-like spec.

const DOCKER_CAPS: &[&str] = &crate::container::spec::DEFAULT_CAPS;
/// `CapBnd` in /proc/<pid>/status for [`DOCKER_CAPS`].
const DOCKER_CAPS_MASK: &str = "00000000a80425fb";

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn mount(dest: &str, kind: &str, source: &str, options: &[&str]) -> Mount {
    Mount {
        destination: dest.into(),
        kind: Some(kind.into()),
        source: Some(source.into()),
        options: strings(options),
    }
}

fn device_rule(allow: bool, kind: &str, major: Option<i64>, minor: Option<i64>, access: &str) -> spec::DeviceRule {
    spec::DeviceRule {
        allow,
        kind: Some(kind.into()),
        major,
        minor,
        access: Some(access.into()),
    }
}

fn docker_like_spec(args: &[&str], cgroups_path: &str) -> Spec {
    let caps = strings(DOCKER_CAPS);
    Spec {
        oci_version: spec::OCI_VERSION.into(),
        process: Process {
            terminal: false,
            user: User::default(),
            args: strings(args),
            env: strings(&[
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME=/root",
            ]),
            cwd: "/".into(),
            capabilities: Some(Capabilities {
                bounding: caps.clone(),
                effective: caps.clone(),
                inheritable: Vec::new(),
                permitted: caps,
                ambient: Vec::new(),
            }),
            rlimits: vec![Rlimit {
                kind: "RLIMIT_NOFILE".into(),
                hard: 4096,
                soft: 1024,
            }],
            no_new_privileges: true,
        },
        root: Root {
            path: "rootfs".into(),
            readonly: false,
        },
        hostname: Some("berth-test".into()),
        mounts: vec![
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
            mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
            mount(
                "/sys/fs/cgroup",
                "cgroup",
                "cgroup",
                &["nosuid", "noexec", "nodev", "relatime", "ro"],
            ),
            mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
            mount(
                "/dev/shm",
                "tmpfs",
                "shm",
                &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            ),
        ],
        linux: SpecLinux {
            namespaces: ["pid", "network", "ipc", "uts", "mount"]
                .iter()
                .map(|k| Namespace {
                    kind: k.to_string(),
                    path: None,
                })
                .collect(),
            resources: Some(Resources {
                devices: vec![
                    device_rule(false, "a", None, None, "rwm"),
                    device_rule(true, "c", None, None, "m"),
                    device_rule(true, "b", None, None, "m"),
                    device_rule(true, "c", Some(1), Some(3), "rwm"),
                    device_rule(true, "c", Some(1), Some(5), "rwm"),
                    device_rule(true, "c", Some(1), Some(7), "rwm"),
                    device_rule(true, "c", Some(1), Some(8), "rwm"),
                    device_rule(true, "c", Some(1), Some(9), "rwm"),
                    device_rule(true, "c", Some(5), Some(0), "rwm"),
                    device_rule(true, "c", Some(5), Some(1), "rwm"),
                    device_rule(true, "c", Some(5), Some(2), "rwm"),
                    device_rule(true, "c", Some(136), None, "rwm"),
                ],
                ..Default::default()
            }),
            cgroups_path: Some(cgroups_path.into()),
            masked_paths: strings(&[
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
            ]),
            readonly_paths: strings(&["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]),
            devices: Vec::new(),
            rootfs_propagation: None,
            seccomp: None,
        },
        annotations: BTreeMap::new(),
    }
}

// ----------------------------------------------------------------------------------------
// The plan, recorded.

/// A call as one line, paths relative to `root` shown as `<root>/…`, flags as mount options.
fn show(call: &Call, root: &Path) -> String {
    let p = |p: &Path| match p.strip_prefix(root) {
        Ok(rel) => format!("<root>/{}", rel.display()),
        Err(_) => p.display().to_string(),
    };
    match call {
        Call::Mount {
            source,
            target,
            fstype,
            flags,
            data,
        } => {
            let mut s = format!(
                "mount {} {} {} {}",
                source.as_deref().map_or("-".into(), p),
                p(target),
                fstype.as_deref().unwrap_or("-"),
                show_flags(*flags)
            );
            if let Some(d) = data {
                s.push(' ');
                s.push_str(d);
            }
            s
        }
        Call::Umount2 { target, flags } => format!("umount2 {} {flags:?}", p(target)),
        Call::PivotRoot { new_root, put_old } => format!("pivot_root {} {}", p(new_root), p(put_old)),
        Call::Chdir(d) => format!("chdir {}", p(d)),
        Call::Symlink { target, link } => format!("symlink {} -> {}", p(link), target.display()),
        Call::Mknod { path, kind, perm, dev } => format!(
            "mknod {} {} {:o} {}:{}",
            p(path),
            match *kind {
                SFlag::S_IFCHR => "c",
                SFlag::S_IFBLK => "b",
                SFlag::S_IFIFO => "p",
                _ => "?",
            },
            perm.bits(),
            nix::sys::stat::major(*dev),
            nix::sys::stat::minor(*dev)
        ),
        Call::Lchown { path, uid, gid } => format!("lchown {} {uid:?}:{gid:?}", p(path)),
        other => format!("{other:?}"),
    }
}

fn show_flags(f: MsFlags) -> String {
    let names = [
        (MsFlags::MS_BIND, "bind"),
        (MsFlags::MS_REC, "rec"),
        (MsFlags::MS_REMOUNT, "remount"),
        (MsFlags::MS_RDONLY, "ro"),
        (MsFlags::MS_NOSUID, "nosuid"),
        (MsFlags::MS_NODEV, "nodev"),
        (MsFlags::MS_NOEXEC, "noexec"),
        (MsFlags::MS_STRICTATIME, "strictatime"),
        (MsFlags::MS_RELATIME, "relatime"),
        (MsFlags::MS_SLAVE, "slave"),
        (MsFlags::MS_PRIVATE, "private"),
        (MsFlags::MS_SHARED, "shared"),
    ];
    let v: Vec<&str> = names.iter().filter(|(b, _)| f.contains(*b)).map(|(_, n)| *n).collect();
    if v.is_empty() {
        "[]".into()
    } else {
        format!("[{}]", v.join(","))
    }
}

/// A rootfs directory with what the masked/readonly checks look for, and a volume whose
/// mount point in the image is a symlink pointing out of the rootfs.
fn plan_rootfs() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("rootfs");
    for dir in ["proc/sys", "proc/acpi", "sys/firmware", "etc", "dev"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    fs::write(root.join("proc/kcore"), "").unwrap();
    symlink("../../../../../../host-etc", root.join("data")).unwrap();
    let volume = d.path().join("volume");
    fs::create_dir(&volume).unwrap();
    (d, root, volume)
}

#[test]
fn rootfs_plan_for_a_typical_spec() {
    let (d, root, volume) = plan_rootfs();
    let mut spec = docker_like_spec(&["sh"], "berth/c1");
    spec.root.readonly = true;
    spec.mounts
        .push(mount("/data", "bind", volume.to_str().unwrap(), &["rbind", "ro"]));
    spec.linux.devices.push(Device {
        path: "/dev/fuse".into(),
        kind: "c".into(),
        major: 10,
        minor: 229,
        file_mode: Some(0o20666),
        uid: Some(0),
        gid: Some(0),
    });
    let view = CgroupView {
        version: Some(crate::cgroup::Version::V1),
        dirs: vec![
            crate::cgroup::CgroupDir {
                name: "memory".into(),
                path: "/sys/fs/cgroup/memory/berth/c1".into(),
            },
            crate::cgroup::CgroupDir {
                name: "cpu,cpuacct".into(),
                path: "/sys/fs/cgroup/cpu,cpuacct/berth/c1".into(),
            },
        ],
    };
    let sys = Recording::new().with_mount_flags(MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_RDONLY);
    prepare_rootfs(&sys, &spec, &root, &view, None).unwrap();
    finish_rootfs(&sys, &spec, &root).unwrap();
    let kcore = if Path::new("/proc/kcore").exists() {
        vec!["symlink <root>/dev/core -> /proc/kcore"]
    } else {
        vec![]
    };
    let v = volume.display().to_string();
    let mut expected: Vec<String> = strings(&[
        "mount - / - [rec,slave]",
        "mount <root>/ <root>/ - [bind,rec]",
        "mount proc <root>/proc proc [nosuid,nodev,noexec]",
        "mount tmpfs <root>/dev tmpfs [nosuid,strictatime] mode=755,size=65536k",
        "mount devpts <root>/dev/pts devpts [nosuid,noexec] newinstance,ptmxmode=0666,mode=0620,gid=5",
        "mount sysfs <root>/sys sysfs [ro,nosuid,nodev,noexec]",
        "mount tmpfs <root>/sys/fs/cgroup tmpfs [nosuid,nodev,noexec] mode=755",
        "mount /sys/fs/cgroup/memory/berth/c1 <root>/sys/fs/cgroup/memory - [bind,rec]",
        "mount - <root>/sys/fs/cgroup/memory - [bind,remount,ro,nosuid,nodev,noexec]",
        "mount /sys/fs/cgroup/cpu,cpuacct/berth/c1 <root>/sys/fs/cgroup/cpu,cpuacct - [bind,rec]",
        "mount - <root>/sys/fs/cgroup/cpu,cpuacct - [bind,remount,ro,nosuid,nodev,noexec]",
        "symlink <root>/sys/fs/cgroup/cpu -> cpu,cpuacct",
        "symlink <root>/sys/fs/cgroup/cpuacct -> cpu,cpuacct",
        "mount - <root>/sys/fs/cgroup - [remount,ro,nosuid,nodev,noexec] mode=755",
        "mount mqueue <root>/dev/mqueue mqueue [nosuid,nodev,noexec]",
        "mount shm <root>/dev/shm tmpfs [nosuid,nodev,noexec] mode=1777,size=65536k",
        // The image's /data is a symlink out of the rootfs: the volume lands inside it.
        &format!("mount {v} <root>/host-etc - [bind,rec]"),
        "mount - <root>/host-etc - [bind,remount,ro,nosuid,nodev]",
        "mknod <root>/dev/fuse c 666 10:229",
        "lchown <root>/dev/fuse Some(0):Some(0)",
        "mknod <root>/dev/null c 666 1:3",
        "mknod <root>/dev/zero c 666 1:5",
        "mknod <root>/dev/full c 666 1:7",
        "mknod <root>/dev/random c 666 1:8",
        "mknod <root>/dev/urandom c 666 1:9",
        "mknod <root>/dev/tty c 666 5:0",
        "symlink <root>/dev/fd -> /proc/self/fd",
        "symlink <root>/dev/stdin -> /proc/self/fd/0",
        "symlink <root>/dev/stdout -> /proc/self/fd/1",
        "symlink <root>/dev/stderr -> /proc/self/fd/2",
        "symlink <root>/dev/ptmx -> pts/ptmx",
    ]);
    expected.extend(kcore.iter().map(|s| s.to_string()));
    expected.extend(strings(&[
        "chdir <root>/",
        "pivot_root . .",
        "mount - . - [rec,slave]",
        "umount2 . MntFlags(MNT_DETACH)",
        "chdir /",
        // Read-only paths: only those present.
        "mount <root>/proc/sys <root>/proc/sys - [bind,rec]",
        "mount - <root>/proc/sys - [bind,remount,ro,nosuid,nodev]",
        // Masked: a file gets /dev/null, a directory an empty read-only tmpfs.
        "mount tmpfs <root>/proc/acpi tmpfs [ro,nosuid,nodev,noexec]",
        "mount <root>/dev/null <root>/proc/kcore - [bind]",
        "mount tmpfs <root>/sys/firmware tmpfs [ro,nosuid,nodev,noexec]",
        // The read-only root last.
        "mount - <root>/ - [bind,remount,ro,nosuid,nodev]",
    ]));
    let got: Vec<String> = sys.calls().iter().map(|c| show(c, &root)).collect();
    assert_eq!(got, expected, "\ngot:\n{}", got.join("\n"));
    // Mount points were made inside the rootfs, never through the symlink.
    assert!(root.join("host-etc").is_dir());
    assert!(!d.path().join("host-etc").exists());
    assert!(root.join("sys/fs/cgroup/cpu,cpuacct").is_dir());
}

#[test]
fn a_refused_mknod_binds_the_host_device() {
    let (_d, root, _) = plan_rootfs();
    let mut spec = docker_like_spec(&["sh"], "c");
    spec.mounts.clear();
    let sys = Recording::new().failing(|c| matches!(c, Call::Mknod { .. }).then_some(Errno::EPERM));
    prepare_rootfs(&sys, &spec, &root, &CgroupView::default(), None).unwrap();
    let calls: Vec<String> = sys.calls().iter().map(|c| show(c, &root)).collect();
    let i = calls
        .iter()
        .position(|c| c == "mknod <root>/dev/null c 666 1:3")
        .unwrap();
    assert_eq!(calls[i + 1], "mount /dev/null <root>/dev/null - [bind]");
    assert!(root.join("dev/null").is_file(), "an empty file to bind onto");
}

#[test]
fn a_bind_remount_keeps_the_source_mount_flags() {
    let (_d, root, volume) = plan_rootfs();
    let mut spec = docker_like_spec(&["sh"], "c");
    spec.mounts = vec![mount(
        "/vol",
        "bind",
        volume.to_str().unwrap(),
        &["bind", "ro", "rprivate"],
    )];
    let sys = Recording::new().with_mount_flags(MsFlags::MS_NOEXEC);
    prepare_rootfs(&sys, &spec, &root, &CgroupView::default(), None).unwrap();
    let calls: Vec<String> = sys.calls().iter().map(|c| show(c, &root)).collect();
    let i = calls
        .iter()
        .position(|c| c.starts_with(&format!("mount {}", volume.display())))
        .unwrap();
    assert_eq!(calls[i], format!("mount {} <root>/vol - [bind]", volume.display()));
    assert_eq!(calls[i + 1], "mount - <root>/vol - [bind,remount,ro,noexec]");
    assert_eq!(calls[i + 2], "mount - <root>/vol - [rec,private]");
}

#[test]
fn a_cgroup_mount_on_v2_binds_the_container_cgroup() {
    let (_d, root, _) = plan_rootfs();
    let mut spec = docker_like_spec(&["sh"], "c");
    spec.mounts = vec![mount("/sys/fs/cgroup", "cgroup", "cgroup", &["ro"])];
    let view = CgroupView {
        version: Some(crate::cgroup::Version::V2),
        dirs: vec![crate::cgroup::CgroupDir {
            name: String::new(),
            path: "/sys/fs/cgroup/berth/c".into(),
        }],
    };
    let sys = Recording::new();
    prepare_rootfs(&sys, &spec, &root, &view, None).unwrap();
    let calls: Vec<String> = sys.calls().iter().map(|c| show(c, &root)).collect();
    assert_eq!(
        calls[2],
        "mount /sys/fs/cgroup/berth/c <root>/sys/fs/cgroup - [bind,rec]"
    );
    assert_eq!(
        calls[3],
        "mount - <root>/sys/fs/cgroup - [bind,remount,ro,nosuid,nodev,noexec]"
    );
}

#[test]
fn identity_is_applied_in_the_order_the_kernel_allows() {
    let mut p = docker_like_spec(&["sh"], "c").process;
    p.user = User {
        uid: 1000,
        gid: 1001,
        additional_gids: vec![10, 20],
    };
    p.capabilities = Some(Capabilities {
        bounding: strings(&["CAP_CHOWN", "CAP_KILL"]),
        effective: strings(&["CAP_KILL"]),
        inheritable: Vec::new(),
        permitted: strings(&["CAP_KILL"]),
        ambient: strings(&["CAP_FUTURE_THING"]),
    });
    let sys = Recording::new();
    apply_identity(&sys, &p).unwrap();
    let set = |names: &[caps::Capability]| names.iter().copied().collect::<caps::CapsHashSet>();
    use crate::sys::CapabilitySet as S;
    use caps::Capability::{CAP_CHOWN, CAP_KILL};
    assert_eq!(
        sys.calls(),
        vec![
            Call::Setrlimit {
                resource: nix::sys::resource::Resource::RLIMIT_NOFILE,
                soft: 1024,
                hard: 4096
            },
            Call::SetCapabilities {
                set: S::Bounding,
                caps: set(&[CAP_CHOWN, CAP_KILL])
            },
            Call::SetKeepcaps(true),
            Call::Setgroups(vec![10, 20]),
            Call::Setresgid(1001),
            Call::Setresuid(1000),
            Call::SetCapabilities {
                set: S::Effective,
                caps: set(&[CAP_KILL])
            },
            Call::SetCapabilities {
                set: S::Inheritable,
                caps: set(&[])
            },
            Call::SetCapabilities {
                set: S::Permitted,
                caps: set(&[CAP_KILL])
            },
            // The unknown name is skipped (warned), not fatal.
            Call::SetCapabilities {
                set: S::Ambient,
                caps: set(&[])
            },
            Call::SetKeepcaps(false),
            Call::SetNoNewPrivs,
        ]
    );

    let sys = Recording::new();
    p.rlimits[0].kind = "RLIMIT_BOGUS".into();
    assert!(matches!(apply_identity(&sys, &p), Err(Error::InvalidSpec(_))));
}

#[test]
fn a_terminal_process_gets_its_own_session_and_controlling_terminal() {
    let mut p = docker_like_spec(&["sh"], "c").process;
    p.terminal = true;
    p.cwd = "/work".into();
    let sys = Recording::new();
    enter_session(&sys, &p, std::io::stdin().as_fd()).unwrap();
    assert_eq!(
        sys.calls(),
        vec![Call::Setsid, Call::SetControllingTerminal, Call::Chdir("/work".into())]
    );
}

#[test]
fn namespaces_are_planned_from_the_spec() {
    let ns = |kinds: &[(&str, Option<&str>)]| {
        let mut s = docker_like_spec(&["sh"], "c");
        s.linux.namespaces = kinds
            .iter()
            .map(|(k, p)| Namespace {
                kind: k.to_string(),
                path: p.map(str::to_string),
            })
            .collect();
        NamespacePlan::from_spec(&s)
    };
    let p = ns(&[("pid", None), ("mount", None), ("uts", None), ("ipc", None)]).unwrap();
    assert_eq!(p.pid, PidNs::New);
    assert_eq!(
        p.unshare,
        CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC
    );
    assert!(
        !p.has(CloneFlags::CLONE_NEWNET),
        "no network namespace: the host's network"
    );

    let p = ns(&[
        ("mount", None),
        ("network", Some("/proc/42/ns/net")),
        ("pid", Some("/proc/42/ns/pid")),
    ])
    .unwrap();
    assert_eq!(p.pid, PidNs::Join("/proc/42/ns/pid".into()));
    assert_eq!(p.join, vec![(CloneFlags::CLONE_NEWNET, "/proc/42/ns/net".to_string())]);
    assert!(p.has(CloneFlags::CLONE_NEWNET));

    assert!(ns(&[("mount", None), ("user", None)]).is_err());
    assert!(ns(&[("pid", None)]).is_err(), "a mount namespace is required");
    assert!(ns(&[("mount", Some("/proc/1/ns/mnt"))]).is_err());
    assert!(ns(&[("mount", None), ("time", None)]).is_err());
}

#[test]
fn programs_are_looked_up_in_the_spec_path() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("a");
    let b = d.path().join("b");
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    fs::write(a.join("tool"), "").unwrap(); // not executable: skipped
    fs::write(b.join("tool"), "").unwrap();
    fs::set_permissions(b.join("tool"), fs::Permissions::from_mode(0o755)).unwrap();
    let env = vec![format!("PATH={}:{}", a.display(), b.display())];
    assert_eq!(lookup("tool", &env).unwrap(), b.join("tool"));
    assert_eq!(lookup("./x/y", &env).unwrap(), PathBuf::from("./x/y"));
    let e = lookup("nope", &env).unwrap_err();
    assert_eq!(e.code, EXIT_NOT_FOUND);
    assert_eq!(e.message, "exec \"nope\": executable file not found in $PATH");
}

// ----------------------------------------------------------------------------------------
// The real thing.

const PROBE: &str = "BERTH_RUNTIME_PROBE";

#[derive(Debug, Serialize, Deserialize)]
enum ProbeMode {
    Run {
        bundle: PathBuf,
        id: String,
    },
    Exec {
        target: i32,
        cgroups_path: Option<String>,
        process: Box<Process>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct ProbeRequest {
    mode: ProbeMode,
    pid_file: Option<PathBuf>,
    /// Where the single-threaded runner writes its own pid (to signal it).
    runner_pid_file: Option<PathBuf>,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// In a probe process (see the module doc), performs the request and exits; otherwise
/// returns at once.
fn serve_probe() {
    let Ok(req) = std::env::var(PROBE) else { return };
    let req: ProbeRequest = serde_json::from_str(&req).unwrap();
    match fork_for_probe() {
        ForkResult::Child => {
            let out = fs::File::create(&req.stdout).unwrap();
            let err = fs::File::create(&req.stderr).unwrap();
            let null = fs::File::open("/dev/null").unwrap();
            nix::unistd::dup2_stdin(&null).unwrap();
            nix::unistd::dup2_stdout(&out).unwrap();
            nix::unistd::dup2_stderr(&err).unwrap();
            if let Some(p) = &req.runner_pid_file {
                fs::write(p, std::process::id().to_string()).unwrap();
            }
            let r = match &req.mode {
                ProbeMode::Run { bundle, id } => run(bundle, id, req.pid_file.as_deref()),
                ProbeMode::Exec {
                    target,
                    cgroups_path,
                    process,
                } => exec(*target, cgroups_path.as_deref(), process, None, req.pid_file.as_deref()),
            };
            let code = match r {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("probe: {e}");
                    200
                }
            };
            std::process::exit(code)
        }
        ForkResult::Parent { child } => {
            let code = match nix::sys::wait::waitpid(child, None).unwrap() {
                WaitStatus::Exited(_, c) => c,
                WaitStatus::Signaled(_, s, _) => 128 + s as i32,
                other => panic!("{other:?}"),
            };
            std::process::exit(code)
        }
    }
}

#[allow(unsafe_code)]
fn fork_for_probe() -> ForkResult {
    // SAFETY: the probe process runs one test; its other thread (the harness's main thread)
    // only waits for this one, and glibc's malloc is fork-safe. The child runs a fresh
    // single-threaded runner, like berth-node's hidden subcommand.
    unsafe { nix::unistd::fork() }.unwrap()
}

/// What a probe printed and returned.
#[derive(Debug)]
struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
    harness: String,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}\n--- harness\n{}",
            self.code, self.stdout, self.stderr, self.harness
        )
    }
}

/// Starts this test binary as a probe running `test` (the current test's name).
fn spawn_probe(
    test: &str,
    dir: &Path,
    mode: ProbeMode,
    pid_file: Option<PathBuf>,
    runner_pid_file: Option<PathBuf>,
) -> (std::process::Child, PathBuf, PathBuf) {
    let n = dir.join(format!(
        "probe-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let req = ProbeRequest {
        mode,
        pid_file,
        runner_pid_file,
        stdout: n.with_extension("out"),
        stderr: n.with_extension("err"),
    };
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &format!("linux::tests::{test}"),
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PROBE, serde_json::to_string(&req).unwrap())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    (child, req.stdout, req.stderr)
}

fn finish_probe(child: std::process::Child, stdout: &Path, stderr: &Path) -> Outcome {
    let out = child.wait_with_output().unwrap();
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: fs::read_to_string(stdout).unwrap_or_default(),
        stderr: fs::read_to_string(stderr).unwrap_or_default(),
        harness: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// A bundle with a busybox rootfs and a docker-like spec, or `None` (skip) without root or
/// busybox; under CI=true those are failures.
struct TestBundle {
    dir: tempfile::TempDir,
    spec: Spec,
}

impl TestBundle {
    fn new(tag: &str, args: &[&str]) -> Option<TestBundle> {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                !berth_conformance::peers::under_ci(),
                "container tests need root under CI=true"
            );
            eprintln!("SKIP: container tests need root");
            return None;
        }
        if !berth_conformance::peers::require_file("/bin/busybox", "busybox-static") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root"] {
            fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        let list = std::process::Command::new("/bin/busybox")
            .arg("--list")
            .output()
            .unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" && !applet.contains('/') && !applet.is_empty() {
                symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
            }
        }
        let cg = crate::cgroup::tests::unique_path(tag);
        Some(TestBundle {
            spec: docker_like_spec(args, &cg),
            dir,
        })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let mi = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let path = self.spec.linux.cgroups_path.as_deref().unwrap();
        crate::cgroup::manager_for(path, Path::new(CGROUP_ROOT), &mi)
            .unwrap()
            .dirs()
            .into_iter()
            .map(|d| d.path)
            .collect()
    }

    /// Runs the container (saving the spec first) and checks that its cgroup is gone after.
    fn run(&self, test: &str) -> Outcome {
        self.spec.save(self.path()).unwrap();
        let (child, o, e) = spawn_probe(
            test,
            self.path(),
            ProbeMode::Run {
                bundle: self.path().into(),
                id: test.into(),
            },
            None,
            None,
        );
        let out = finish_probe(child, &o, &e);
        self.assert_cgroup_removed(&out);
        out
    }

    fn assert_cgroup_removed(&self, out: &Outcome) {
        for d in self.cgroup_dirs() {
            assert!(!d.exists(), "cgroup {} left behind\n{out}", d.display());
            let _ = fs::remove_dir(d.parent().unwrap());
        }
    }
}

fn line<'a>(out: &'a Outcome, key: &str) -> &'a str {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= line\n{out}"))
}

#[test]
fn runs_a_container_in_its_namespaces() {
    serve_probe();
    let script = r#"
echo hi
echo "host=$(hostname)"
echo "pids=$(ls -d /proc/[0-9]* | wc -l)"
echo "pid1=$(cat /proc/1/comm)"
echo "netdevs=$(grep -c : /proc/net/dev)"
echo "lo=$(grep -c 'lo:' /proc/net/dev)"
echo "timer_list=$(wc -c < /proc/timer_list)"
echo "firmware=$(ls /sys/firmware | wc -l)"
if (echo x > /proc/sys/kernel/hostname) 2>/dev/null; then echo procsys=writable; else echo procsys=ro; fi
echo "bnd=$(grep CapBnd /proc/self/status | cut -f2)"
echo "eff=$(grep CapEff /proc/self/status | cut -f2)"
echo "nnp=$(grep NoNewPrivs /proc/self/status | cut -f2)"
echo "nofile=$(ulimit -n)"
echo "null=$(echo x > /dev/null && echo ok)"
echo "zero=$(head -c 4 /dev/zero | wc -c)"
echo "fd=$(readlink /dev/fd)"
echo "ptmx=$(readlink /dev/ptmx)"
echo "devdirs=$(ls -d /dev/pts /dev/shm /dev/mqueue | wc -l)"
echo "data=$(cat /data/hello)"
if (touch /data/new) 2>/dev/null; then echo volume=writable; else echo volume=ro; fi
echo "cwd=$(pwd)"
echo "memlimit=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)"
if (touch /sys/x) 2>/dev/null; then echo sys=writable; else echo sys=ro; fi
if (touch /rootfile) 2>/dev/null; then echo root=writable; else echo root=ro; fi
"#;
    let Some(mut b) = TestBundle::new("ns", &["sh", "-c", script]) else {
        return;
    };
    let volume = b.path().join("volume");
    fs::create_dir(&volume).unwrap();
    fs::write(volume.join("hello"), "from the host").unwrap();
    b.spec
        .mounts
        .push(mount("/data", "bind", volume.to_str().unwrap(), &["rbind", "ro"]));
    b.spec.process.cwd = "/root".into();
    b.spec.linux.resources.as_mut().unwrap().memory = Some(spec::Memory {
        limit: Some(256 << 20),
        swap: None,
    });
    let out = b.run("runs_a_container_in_its_namespaces");
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.starts_with("hi\n"), "{out}");
    assert_eq!(line(&out, "host"), "berth-test", "{out}");
    let pids: usize = line(&out, "pids").parse().unwrap();
    assert!(
        pids <= 5,
        "a new pid namespace shows only the container's processes\n{out}"
    );
    assert_eq!(line(&out, "pid1"), "sh", "{out}");
    assert_eq!(line(&out, "netdevs"), "1", "a new network namespace has only lo\n{out}");
    assert_eq!(line(&out, "lo"), "1", "{out}");
    assert_eq!(line(&out, "timer_list"), "0", "masked file\n{out}");
    assert_eq!(line(&out, "firmware"), "0", "masked directory\n{out}");
    assert_eq!(line(&out, "procsys"), "ro", "{out}");
    assert_eq!(line(&out, "bnd"), DOCKER_CAPS_MASK, "{out}");
    assert_eq!(line(&out, "eff"), DOCKER_CAPS_MASK, "{out}");
    assert_eq!(line(&out, "nnp"), "1", "{out}");
    assert_eq!(line(&out, "nofile"), "1024", "{out}");
    assert_eq!(line(&out, "null"), "ok", "{out}");
    assert_eq!(line(&out, "zero"), "4", "{out}");
    assert_eq!(line(&out, "fd"), "/proc/self/fd", "{out}");
    assert_eq!(line(&out, "ptmx"), "pts/ptmx", "{out}");
    assert_eq!(line(&out, "devdirs"), "3", "{out}");
    assert_eq!(line(&out, "data"), "from the host", "{out}");
    assert_eq!(line(&out, "volume"), "ro", "{out}");
    assert_eq!(line(&out, "cwd"), "/root", "{out}");
    assert_eq!(
        line(&out, "memlimit"),
        "268435456",
        "its own cgroup, limits applied\n{out}"
    );
    assert_eq!(line(&out, "sys"), "ro", "{out}");
    assert_eq!(line(&out, "root"), "writable", "{out}");
    assert!(out.stderr.is_empty(), "{out}");
    // Nothing of the container's mounts is visible on the host.
    let mi = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mi.contains(&b.rootfs().display().to_string()), "{mi}");
}

#[test]
fn exit_statuses_pass_through() {
    serve_probe();
    let name = "exit_statuses_pass_through";
    let Some(mut b) = TestBundle::new("exit", &["sh", "-c", "echo out; echo err >&2; exit 3"]) else {
        return;
    };
    let out = b.run(name);
    assert_eq!(out.code, 3, "{out}");
    assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("out\n", "err\n"), "{out}");

    b.spec.process.args = strings(&["no-such-program"]);
    let out = b.run(name);
    assert_eq!(out.code, 127, "{out}");
    assert_eq!(
        out.stderr, "berth-node: exec \"no-such-program\": executable file not found in $PATH\n",
        "{out}"
    );

    fs::write(b.rootfs().join("bin/notexec"), "#!/bin/sh\n").unwrap();
    b.spec.process.args = strings(&["/bin/notexec"]);
    let out = b.run(name);
    assert_eq!(out.code, 126, "{out}");
    assert_eq!(
        out.stderr, "berth-node: exec \"/bin/notexec\": permission denied\n",
        "{out}"
    );

    // A setup failure inside the container: 125 and one line naming the cause.
    b.spec.process.args = strings(&["true"]);
    b.spec
        .mounts
        .push(mount("/data", "bind", "/no/such/volume", &["rbind"]));
    let out = b.run(name);
    assert_eq!(out.code, 125, "{out}");
    assert!(
        out.stderr.starts_with("berth-node: bind source /no/such/volume: ") && out.stderr.lines().count() == 1,
        "{out}"
    );
    b.spec.mounts.pop();

    // With the tiny init, the main process's death by a signal becomes 128 + signal.
    b.spec.annotations.insert(INIT_ANNOTATION.into(), "true".into());
    b.spec.process.args = strings(&["sh", "-c", "cat /proc/1/status | grep -c NSpid; kill -9 $$"]);
    let out = b.run(name);
    assert_eq!(out.code, 137, "{out}");
}

#[test]
fn host_network_without_a_network_namespace() {
    serve_probe();
    let Some(mut b) = TestBundle::new("hostnet", &["sh", "-c", "grep -c : /proc/net/dev"]) else {
        return;
    };
    b.spec.linux.namespaces.retain(|n| n.kind != "network");
    let out = b.run("host_network_without_a_network_namespace");
    assert_eq!(out.code, 0, "{out}");
    let host = fs::read_to_string("/proc/net/dev").unwrap().matches(':').count();
    assert_eq!(out.stdout.trim().parse::<usize>().unwrap(), host, "{out}");
}

#[test]
fn readonly_root_and_an_unprivileged_user() {
    serve_probe();
    let script = r#"
echo "id=$(id)"
if (touch /x) 2>/dev/null; then echo root=writable; else echo root=ro; fi
echo "eff=$(grep CapEff /proc/self/status | cut -f2)"
echo "prm=$(grep CapPrm /proc/self/status | cut -f2)"
"#;
    let Some(mut b) = TestBundle::new("user", &["sh", "-c", script]) else {
        return;
    };
    b.spec.root.readonly = true;
    b.spec.process.user = User {
        uid: 1000,
        gid: 1000,
        additional_gids: vec![1001],
    };
    let out = b.run("readonly_root_and_an_unprivileged_user");
    assert_eq!(out.code, 0, "{out}");
    // Exactly the spec's additional groups (busybox prints getgroups(2)).
    assert_eq!(line(&out, "id"), "uid=1000 gid=1000 groups=1001", "{out}");
    assert_eq!(line(&out, "root"), "ro", "{out}");
    assert_eq!(line(&out, "eff"), "0000000000000000", "{out}");
    assert_eq!(line(&out, "prm"), "0000000000000000", "{out}");
}

#[test]
fn memory_limit_kills_with_137() {
    serve_probe();
    let Some(mut b) = TestBundle::new("oom", &["sh", "-c", "x=$(yes | head -c 200000000); echo survived"]) else {
        return;
    };
    b.spec.linux.resources.as_mut().unwrap().memory = Some(spec::Memory {
        limit: Some(32 << 20),
        swap: Some(32 << 20),
    });
    let out = b.run("memory_limit_kills_with_137");
    assert_eq!(out.code, 137, "{out}");
    assert!(!out.stdout.contains("survived"), "{out}");
}

#[test]
fn pids_limit_is_enforced() {
    serve_probe();
    let script = "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 1 & done; wait; echo finished";
    let Some(mut b) = TestBundle::new("pids", &["sh", "-c", script]) else {
        return;
    };
    b.spec.linux.resources.as_mut().unwrap().pids = Some(spec::Pids { limit: 4 });
    let out = b.run("pids_limit_is_enforced");
    assert!(out.stderr.contains("can't fork"), "{out}");
}

#[test]
fn exec_joins_a_running_container_and_signals_are_forwarded() {
    serve_probe();
    let name = "exec_joins_a_running_container_and_signals_are_forwarded";
    let Some(mut b) = TestBundle::new("exec", &["sleep", "60"]) else {
        return;
    };
    b.spec.annotations.insert(INIT_ANNOTATION.into(), "true".into());
    b.spec.save(b.path()).unwrap();
    let pid_file = b.path().join("container.pid");
    let runner_pid_file = b.path().join("runner.pid");
    let (runner, o, e) = spawn_probe(
        name,
        b.path(),
        ProbeMode::Run {
            bundle: b.path().into(),
            id: "exec".into(),
        },
        Some(pid_file.clone()),
        Some(runner_pid_file.clone()),
    );
    let start = Instant::now();
    while !(pid_file.exists() && runner_pid_file.exists()) {
        assert!(start.elapsed() < Duration::from_secs(20), "no pid file");
        std::thread::sleep(Duration::from_millis(20));
    }
    let target: i32 = fs::read_to_string(&pid_file).unwrap().parse().unwrap();

    let mut process = b.spec.process.clone();
    process.args = strings(&[
        "sh",
        "-c",
        "echo host=$(hostname); echo pid=$$; echo cwd=$(pwd); grep memory /proc/self/cgroup; \
         echo procs=$(ls -d /proc/[0-9]* | wc -l); exit 5",
    ]);
    process.cwd = "/tmp".into();
    let cg = b.spec.linux.cgroups_path.clone();
    let (child, xo, xe) = spawn_probe(
        name,
        b.path(),
        ProbeMode::Exec {
            target,
            cgroups_path: cg.clone(),
            process: Box::new(process),
        },
        None,
        None,
    );
    let out = finish_probe(child, &xo, &xe);
    assert_eq!(out.code, 5, "{out}");
    assert_eq!(line(&out, "host"), "berth-test", "{out}");
    let pid: i32 = line(&out, "pid").parse().unwrap();
    assert!(pid < 20, "in the container's pid namespace\n{out}");
    assert_eq!(line(&out, "cwd"), "/tmp", "{out}");
    assert!(out.stdout.contains(&format!(":memory:/{}", cg.unwrap())), "{out}");
    let procs: usize = line(&out, "procs").parse().unwrap();
    assert!(procs <= 6, "init, sleep and ours\n{out}");

    // SIGTERM to the runner reaches `sleep` through the tiny init: 128 + 15.
    let runner_pid: i32 = fs::read_to_string(&runner_pid_file).unwrap().parse().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(runner_pid), Signal::SIGTERM).unwrap();
    let out = finish_probe(runner, &o, &e);
    assert_eq!(out.code, 143, "{out}");
    b.assert_cgroup_removed(&out);
}
